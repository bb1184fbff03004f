// The customer's page: built on the public API only (sessions, types, packages, registration status).
// Money and weights stay strings from the server to the screen: never parsed into binary floats.

import { $ } from "../lib/dom.js";
import { showBanner } from "../lib/banner.js";
import { plural } from "../lib/format.js";
import { formatBound } from "../lib/validation.js";
import { api } from "./session.js";
import { loadTypes, types } from "./types.js";
import { loadRules, startForm } from "./form.js";
import { loadList, startList } from "./list.js";
import { startDetail } from "./detail.js";
import { resumePending } from "./registrations.js";

const places = (n) => `до ${n} ${plural(n, "знака", "знаков", "знаков")} после запятой`;

/** The hints under the number fields say the server's bounds, as the checks use them. */
function showBounds(rules) {
  const weight = rules.weight_kg;
  const value = rules.content_value_usd;
  $("weight_kg-hint").textContent =
    `Больше ${formatBound(weight.gt)} и не больше ${formatBound(weight.le)}, ${places(weight.decimal_places)}.`;
  $("content_value_usd-hint").textContent =
    `От ${formatBound(value.ge)} до ${formatBound(value.le)}, ${places(value.decimal_places)}.`;
}

async function start() {
  startForm();
  startList();
  startDetail();
  $("refresh").addEventListener("click", () => {
    if (!types.length) loadTypes();
    loadList();
  });

  $("list-status").textContent = "Загрузка…";
  const typesLoaded = loadTypes();
  loadRules().then((rules) => rules && showBounds(rules), () => {}); // a failure shows when the form is sent
  try {
    // A returning customer keeps their session: a new one is opened only when the server answers 401.
    await api("GET", "/packages/?size=1");
  } catch (error) {
    showBanner(error);
    $("list-status").textContent = "Список не загрузился.";
    await typesLoaded;
    return;
  }
  await Promise.all([typesLoaded, loadList()]);
  resumePending();
}

start();

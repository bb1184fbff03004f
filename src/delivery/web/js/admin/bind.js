// Binding a transport company to a package: the first company wins; a 409 names the one that holds it.

import { $, el } from "../lib/dom.js";
import { showBanner } from "../lib/banner.js";
import { exactInteger } from "../lib/api.js";
import { checkId, splitErrors } from "../lib/validation.js";
import { adminApi, TokenRefused } from "./operator.js";
import { loadAudit } from "./audit.js";

// The API's bounds: a package id is a BIGINT; a company id is at most 2^53 - 1, which every JSON tool
// holds exactly (the page still sends its digits as they are).
const MAX_PACKAGE_ID = "9223372036854775807";
const MAX_COMPANY_ID = "9007199254740991";
const INPUTS = { package_id: "bind-package", company_id: "bind-company" };

function setError(field, message) {
  const input = $(INPUTS[field]);
  const error = $(`${INPUTS[field]}-error`);
  error.textContent = message || "";
  error.hidden = !message;
  if (message) {
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", error.id);
  } else {
    input.removeAttribute("aria-invalid");
    input.removeAttribute("aria-describedby");
  }
}

function outcome(kind, ...children) {
  $("bind-result").replaceChildren(el("p", { class: "outcome", "data-outcome": kind }, ...children));
}

async function bind(packageId, companyId) {
  // Ids go into the JSON as their digits: a JS number would round one above 2^53.
  const result = await adminApi("POST", `/packages/${packageId}/transport-company/`, {
    rawBody: `{"company_id": ${companyId}}`,
  });
  if (result.status === 200 || result.status === 409) loadAudit(); // bound or refused: in the trail now
  if (result.status === 200) {
    const holder = exactInteger(result.text, "transport_company_id") || companyId;
    outcome("bound", `Посылка № ${packageId} закреплена за компанией № `, el("strong", { "data-holder": holder, text: holder }), ".");
  } else if (result.status === 409) {
    const holder = exactInteger(result.text, "transport_company_id") || "?";
    outcome(
      "conflict",
      `Не закреплена: посылку № ${packageId} уже доставляет компания № `,
      el("strong", { "data-holder": holder, text: holder }),
      `. Закрепить её за компанией № ${companyId} нельзя.`,
    );
  } else if (result.status === 404) {
    outcome("not-found", `Посылка № ${packageId} не найдена.`);
  } else if (result.status === 422) {
    const { byField, other } = splitErrors(result.data && result.data.detail, ["company_id"]);
    if (byField.company_id) setError("company_id", byField.company_id);
    if (other.length) outcome("invalid", other.join(" "));
  } else {
    outcome("invalid", `Сервер ответил ${result.status}.`);
  }
}

async function onSubmit(event) {
  event.preventDefault();
  $("bind-result").replaceChildren();
  const packageId = checkId($(INPUTS.package_id).value, MAX_PACKAGE_ID);
  const companyId = checkId($(INPUTS.company_id).value, MAX_COMPANY_ID);
  setError("package_id", packageId ? null : "Введите номер посылки: целое число от 1");
  setError("company_id", companyId ? null : "Введите номер компании: целое число от 1");
  if (!packageId || !companyId) {
    $(INPUTS[packageId ? "company_id" : "package_id"]).focus();
    return;
  }
  const button = $("bind-submit");
  button.disabled = true;
  try {
    await bind(packageId, companyId);
  } catch (error) {
    if (!(error instanceof TokenRefused)) showBanner(error);
  } finally {
    button.disabled = false;
  }
}

export function startBind() {
  $("bind-form").addEventListener("submit", onSubmit);
  for (const field of Object.keys(INPUTS)) {
    $(INPUTS[field]).addEventListener("input", () => setError(field, null));
  }
}

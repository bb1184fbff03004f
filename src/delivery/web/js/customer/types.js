// The parcel types, from GET /types/, for the form and the filter.

import { $, el } from "../lib/dom.js";
import { showBanner } from "../lib/banner.js";
import { ServiceError } from "../lib/api.js";
import { typeLabel } from "../lib/format.js";
import { api } from "./session.js";

export const types = [];

function fill(select, first) {
  const chosen = select.value;
  select.replaceChildren(
    el("option", { value: "", text: first }),
    ...types.map((t) => el("option", { value: String(t.id), text: typeLabel(t) })),
  );
  select.value = chosen;
}

export async function loadTypes() {
  try {
    const result = await api("GET", "/types/");
    if (result.status !== 200 || !Array.isArray(result.data)) throw new ServiceError("server");
    types.splice(0, types.length, ...result.data);
  } catch (error) {
    $("type_id").replaceChildren(el("option", { value: "", text: "Типы не загрузились — нажмите «Обновить»" }));
    showBanner(error);
    return;
  }
  fill($("type_id"), "Выберите тип");
  fill($("filter-type"), "Все типы");
}

// A delivery cost as the customer reads it: roubles, or "Не рассчитано" while it is unknown.

import { el } from "../lib/dom.js";
import { formatRub } from "../lib/decimal.js";

export const NOT_CALCULATED = "Не рассчитано";

export function formatCost(cost) {
  return cost == null ? NOT_CALCULATED : formatRub(cost);
}

export function costNode(cost) {
  if (cost == null) return el("span", { class: "not-calculated", text: NOT_CALCULATED });
  return el("span", { class: "cost", text: formatCost(cost) });
}

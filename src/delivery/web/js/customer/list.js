// The customer's parcels: filters, pages, and stale answers dropped.

import { $, el } from "../lib/dom.js";
import { showBanner } from "../lib/banner.js";
import { formatDecimal } from "../lib/decimal.js";
import { typeLabel } from "../lib/format.js";
import { listSummary, pageAfterShrink, pager } from "../lib/paging.js";
import { api } from "./session.js";
import { costNode } from "./cost.js";
import { openDetail } from "./detail.js";

const PAGE_SIZE = 10;
const state = { page: 1, type: "", hasCost: "", seq: 0 };

function cell(label, content, className) {
  return el("td", { "data-label": label, class: className }, content);
}

function parcelRow(p) {
  const open = el("button", { type: "button", class: "link-button", "aria-haspopup": "dialog", text: p.name });
  open.addEventListener("click", () => openDetail(p.id, open));
  return el(
    "tr",
    { "data-id": String(p.id) },
    cell("№", String(p.id)),
    cell("Название", open, "name-cell"),
    cell("Тип", typeLabel(p.type)),
    cell("Вес, кг", formatDecimal(p.weight_kg), "num"),
    cell("Содержимое, $", formatDecimal(p.content_value_usd), "num"),
    cell("Доставка, ₽", costNode(p.delivery_cost_rub), "num"),
  );
}

export async function loadList() {
  const seq = ++state.seq;
  const query = new URLSearchParams({ page: String(state.page), size: String(PAGE_SIZE) });
  if (state.type) query.set("type", state.type);
  if (state.hasCost) query.set("has_cost", state.hasCost);
  $("parcels").setAttribute("aria-busy", "true");
  let result;
  try {
    result = await api("GET", `/packages/?${query}`);
  } catch (error) {
    if (seq === state.seq) {
      showBanner(error);
      $("list-status").textContent = "Список не загрузился.";
      $("parcels").removeAttribute("aria-busy");
    }
    return;
  }
  if (seq !== state.seq) return; // a newer request (another page or filter) has been made meanwhile
  $("parcels").removeAttribute("aria-busy");
  if (result.status !== 200 || !result.data) {
    $("list-status").textContent = `Список не загрузился (ответ ${result.status}).`;
    return;
  }
  const instead = pageAfterShrink(result.data, state.page);
  if (instead !== null) {
    state.page = instead;
    loadList();
    return;
  }
  render(result.data);
}

function render(data) {
  $("parcels-body").replaceChildren(...data.items.map(parcelRow));
  $("parcels").hidden = data.items.length === 0;
  $("list-status").textContent = listSummary(data.total, Boolean(state.type || state.hasCost));
  const view = pager(data);
  $("pager").hidden = view.hidden;
  $("page-info").textContent = view.info;
  $("prev").disabled = view.prevDisabled;
  $("next").disabled = view.nextDisabled;
}

function goToPage(page, focusId) {
  state.page = page;
  loadList().then(() => {
    // Keep the keyboard where it was; a button that became disabled hands focus to its neighbour.
    if ($(focusId).disabled) $(focusId === "next" ? "prev" : "next").focus();
  });
}

function onFilterChange() {
  state.type = $("filter-type").value;
  state.hasCost = $("filter-cost").value;
  state.page = 1;
  loadList();
}

export function startList() {
  $("filters").addEventListener("change", onFilterChange);
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("prev").addEventListener("click", () => goToPage(Math.max(1, state.page - 1), "prev"));
  $("next").addEventListener("click", () => goToPage(state.page + 1, "next"));
}

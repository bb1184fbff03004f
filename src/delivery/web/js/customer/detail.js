// A parcel's detail, in a modal dialog; the focus goes back to what opened it.

import { $, el } from "../lib/dom.js";
import { showBanner } from "../lib/banner.js";
import { formatDecimal } from "../lib/decimal.js";
import { formatDateTime, typeLabel } from "../lib/format.js";
import { api } from "./session.js";
import { costNode } from "./cost.js";

let opener = null;

function detailRows(p) {
  const rows = [
    ["Номер", `№ ${p.id}`],
    ["Название", p.name],
    ["Тип", typeLabel(p.type)],
    ["Вес", `${formatDecimal(p.weight_kg)}\u00a0кг`],
    ["Стоимость содержимого", `${formatDecimal(p.content_value_usd)}\u00a0$`],
    ["Стоимость доставки", costNode(p.delivery_cost_rub)],
    ["Транспортная компания", p.transport_company_id == null ? "Не назначена" : `№ ${p.transport_company_id}`],
    ["Создана", el("time", { datetime: p.created_at, text: formatDateTime(p.created_at) })],
  ];
  return rows.flatMap(([term, value]) => [el("dt", { text: term }), el("dd", {}, value)]);
}

export async function openDetail(packageId, from) {
  opener = from;
  const dialog = $("detail");
  $("detail-heading").textContent = `Посылка № ${packageId}`;
  $("detail-fields").replaceChildren();
  $("detail-status").textContent = "Загрузка…";
  if (!dialog.open) dialog.showModal();
  $("detail-close").focus();
  let result;
  try {
    result = await api("GET", `/packages/${encodeURIComponent(packageId)}/`);
  } catch (error) {
    showBanner(error);
    $("detail-status").textContent = "Не удалось загрузить посылку.";
    return;
  }
  if (result.status === 404) {
    $("detail-status").textContent = "Посылка не найдена.";
    return;
  }
  if (result.status !== 200 || !result.data) {
    $("detail-status").textContent = `Не удалось загрузить посылку (ответ ${result.status}).`;
    return;
  }
  $("detail-status").textContent = "";
  $("detail-heading").textContent = result.data.name;
  $("detail-fields").replaceChildren(...detailRows(result.data));
}

export function startDetail() {
  $("detail-close").addEventListener("click", () => $("detail").close());
  $("detail").addEventListener("close", () => {
    if (opener && opener.isConnected) opener.focus();
    opener = null;
  });
}

// Following each registration until it is registered (or failed), across reloads of the page.

import { $, el } from "../lib/dom.js";
import { showBanner } from "../lib/banner.js";
import { ServiceError, retryAfterSeconds } from "../lib/api.js";
import { formatWait } from "../lib/format.js";
import { formatCost } from "./cost.js";
import { api } from "./session.js";
import { loadList } from "./list.js";
import { openDetail } from "./detail.js";

const POLL_FIRST_MS = 300;
const POLL_MAX_MS = 5000;
const PENDING_KEY = "delivery.pending";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function savePending(list) {
  try {
    sessionStorage.setItem(PENDING_KEY, JSON.stringify(list));
  } catch {
    // storage may be off (private mode): the page still follows the registration while it is open
  }
}

function loadPending() {
  try {
    const list = JSON.parse(sessionStorage.getItem(PENDING_KEY) || "[]");
    return Array.isArray(list) ? list : [];
  } catch {
    return [];
  }
}

function forget(statusId) {
  savePending(loadPending().filter((item) => item.statusId !== statusId));
}

function registrationItem(reg) {
  const badge = el("span", { class: "badge" });
  const text = el("span", { class: "registration-text" });
  const item = el(
    "li",
    { class: "registration", "data-status-id": reg.statusId },
    el("span", { class: "registration-name", text: reg.name }),
    badge,
    reg.type ? el("span", { class: "registration-type", text: reg.type }) : null,
    text,
  );
  const set = (stateName, badgeText, message) => {
    item.dataset.state = stateName;
    badge.textContent = badgeText;
    text.textContent = message;
  };
  return { item, set };
}

function show(reg) {
  const view = registrationItem(reg);
  view.set("pending", "Ожидает", "Принята, регистрируем…");
  $("registrations").prepend(view.item);
  $("registrations-empty").hidden = true;
  follow(reg, view);
}

export function track(reg) {
  savePending([...loadPending().filter((item) => item.statusId !== reg.statusId), reg]);
  show(reg);
}

/** Follow again the registrations a reload of the page interrupted. */
export function resumePending() {
  loadPending().forEach(show);
}

/** Milliseconds to wait before polling again: the answer's Retry-After when it gives one, else the backoff's. */
function waitMs(retryAfter, backoff) {
  const seconds = retryAfterSeconds(retryAfter);
  return seconds === null ? backoff : Math.max(seconds * 1000, backoff);
}

async function follow(reg, view) {
  const path = `/packages/status/${encodeURIComponent(reg.statusId)}/`;
  let delay = POLL_FIRST_MS;
  let wait = delay;
  for (;;) {
    await sleep(wait);
    delay = Math.min(delay * 2, POLL_MAX_MS);
    wait = delay;
    let result;
    try {
      result = await api("GET", path);
    } catch (error) {
      showBanner(error); // keep following: the answer comes once the service is back
      if (error instanceof ServiceError) wait = waitMs(error.retryAfter, delay);
      continue;
    }
    if (result.status === 429) {
      // Over the rate limit: the registration goes on regardless; ask again once the limit allows it.
      wait = waitMs(result.headers.get("Retry-After"), delay);
      view.set("pending", "Ожидает", `Принята, регистрируем… Статус проверим через ${formatWait(wait / 1000)}.`);
      continue;
    }
    if (result.status === 404) {
      forget(reg.statusId);
      view.set("failed", "Неизвестно", "Статус регистрации больше не хранится. Посылку ищите в списке.");
      return;
    }
    if (result.status !== 200) {
      forget(reg.statusId);
      view.set("failed", "Неизвестно", `Не удалось узнать статус (ответ ${result.status}).`);
      return;
    }
    const status = result.data;
    if (!status || !status.done) {
      view.set("pending", "Ожидает", "Принята, регистрируем…");
      continue;
    }
    forget(reg.statusId);
    if (status.error) {
      view.set("failed", "Ошибка", `Не зарегистрирована: ${status.error_message || "причина неизвестна"}`);
      return;
    }
    await showRegistered(view, status.package_id);
    loadList();
    return;
  }
}

async function showRegistered(view, packageId) {
  view.set("registered", "Зарегистрирована", `Посылка № ${packageId}.`);
  let cost = "…";
  try {
    const result = await api("GET", `/packages/${encodeURIComponent(packageId)}/`);
    if (result.status === 200 && result.data) cost = formatCost(result.data.delivery_cost_rub);
  } catch (error) {
    showBanner(error);
  }
  view.set("registered", "Зарегистрирована", `Посылка № ${packageId}, доставка: ${cost}`);
  const more = el("button", {
    type: "button",
    class: "link-button",
    "aria-haspopup": "dialog",
    text: "Подробнее",
    "aria-label": `Подробнее о посылке № ${packageId}`,
  });
  more.addEventListener("click", () => openDetail(packageId, more));
  view.item.append(more);
}

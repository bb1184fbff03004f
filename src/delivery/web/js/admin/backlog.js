// The backlog, refreshed every few seconds while the page is visible.

import { $ } from "../lib/dom.js";
import { showBanner } from "../lib/banner.js";
import { formatAge, formatDateTime } from "../lib/format.js";
import { adminApi, TokenRefused } from "./operator.js";
import { loadAudit } from "./audit.js";

const REFRESH_MS = 5000;
let timer = null;
let inFlight = false;

export async function loadBacklog() {
  if (inFlight) return;
  inFlight = true;
  try {
    const result = await adminApi("GET", "/admin/stats/backlog/");
    if (result.status !== 200 || !result.data) {
      $("backlog-updated").textContent = `Не обновилось (ответ ${result.status}).`;
      return;
    }
    const data = result.data;
    $("backlog-unpriced").textContent = String(data.packages_without_cost);
    $("backlog-pending").textContent = `${data.registrations_pending_exact ? "" : "не меньше "}${data.registrations_pending}`;
    $("backlog-last").textContent =
      data.last_cost_calculated_at == null ? "ещё не было" : formatDateTime(data.last_cost_calculated_at);
    const run = data.last_pricing_run;
    $("backlog-run").textContent =
      run == null
        ? "ещё не было"
        : `${formatDateTime(run.finished_at)}: ${run.outcome === "ok" ? `рассчитано посылок: ${run.priced}` : "нет курса банка"}`;
    $("backlog-dead").textContent = deadLetters(data.dead_letters, data.oldest_dead_letter_at);
    $("backlog-updated").textContent = `Обновлено в ${new Date().toLocaleTimeString("ru-RU")}`;
  } catch (error) {
    if (error instanceof TokenRefused) return;
    showBanner(error);
    $("backlog-updated").textContent = "Не обновилось: нет ответа сервера.";
  } finally {
    inFlight = false;
  }
}

/** "нет", or how many and how long ago the oldest failed: "2, самое старое — 3 ч назад". */
function deadLetters(count, oldestAt) {
  if (!count) return "нет";
  const since = oldestAt == null ? NaN : (Date.now() - new Date(oldestAt).getTime()) / 1000;
  if (Number.isNaN(since)) return String(count);
  return `${count}, самое старое — ${formatAge(Math.max(since, 0))} назад`;
}

async function requeueDeadLetters() {
  const status = $("dead-status");
  const button = $("dead-requeue");
  button.disabled = true;
  status.textContent = "Отправляются…";
  try {
    const result = await adminApi("POST", "/admin/dead-letters/requeue/");
    status.textContent =
      result.status === 202 && result.data
        ? `Отправлено снова: ${result.data.requeued}.`
        : `Не отправлены (ответ ${result.status}).`;
    loadAudit();
    await loadBacklog();
  } catch (error) {
    if (error instanceof TokenRefused) return;
    showBanner(error);
    status.textContent = "Не отправлены: нет ответа сервера.";
  } finally {
    button.disabled = false;
  }
}

export function startBacklog() {
  $("backlog-refresh").addEventListener("click", loadBacklog);
  $("dead-requeue").onclick = requeueDeadLetters; // a property: a second start does not add a second handler
  stopBacklog();
  loadBacklog();
  timer = setInterval(() => {
    if (!document.hidden) loadBacklog();
  }, REFRESH_MS);
}

export function stopBacklog() {
  if (timer !== null) clearInterval(timer);
  timer = null;
}

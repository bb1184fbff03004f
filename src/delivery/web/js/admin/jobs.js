// Running the pricing job now, and following it to its result. The last job's id is kept in this tab, so a
// reload follows it on.

import { $, el } from "../lib/dom.js";
import { showBanner } from "../lib/banner.js";
import { plural } from "../lib/format.js";
import { adminApi, TokenRefused } from "./operator.js";
import { loadBacklog } from "./backlog.js";
import { loadCosts } from "./costs.js";
import { loadAudit } from "./audit.js";

const JOB_KEY = "delivery.admin.job";
const POLL_MS = 1000;
const STATES = {
  PENDING: "в очереди",
  RECEIVED: "получена исполнителем",
  STARTED: "выполняется",
  RETRY: "повтор после сбоя",
  SUCCESS: "выполнена",
  FAILURE: "завершилась ошибкой",
  REVOKED: "отменена",
};
const DONE = new Set(["SUCCESS", "FAILURE", "REVOKED"]);
let following = null;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function remember(taskId) {
  try {
    if (taskId) sessionStorage.setItem(JOB_KEY, taskId);
    else sessionStorage.removeItem(JOB_KEY);
  } catch {
    // storage off: the job is still followed while the page is open
  }
}

function show(taskId, job) {
  const state = job ? job.state : "PENDING";
  const status = $("job-status");
  status.dataset.state = state;
  let text = `Задача ${STATES[state] || state}`;
  if (state === "SUCCESS" && job.result && Number.isInteger(job.result.priced)) {
    const n = job.result.priced;
    text += `: рассчитана стоимость ${n} ${plural(n, "посылки", "посылок", "посылок")}.`;
  } else if (state === "FAILURE") {
    text += `: ${job.error || "причина неизвестна"}.`;
  } else {
    text += "…";
  }
  status.replaceChildren(el("span", { class: "job-text", text }), " ", el("code", { class: "task-id", text: taskId }));
}

async function follow(taskId) {
  following = taskId;
  show(taskId, null);
  for (;;) {
    let result;
    try {
      result = await adminApi("GET", `/admin/jobs/${encodeURIComponent(taskId)}/`);
    } catch (error) {
      if (error instanceof TokenRefused) return;
      showBanner(error); // keep following: the answer comes once the service is back
      await sleep(POLL_MS * 3);
      continue;
    }
    if (following !== taskId) return; // a newer run is followed now
    if (result.status === 200 && result.data) {
      show(taskId, result.data);
      if (DONE.has(result.data.state)) {
        remember(null);
        loadBacklog();
        loadCosts();
        return;
      }
    }
    await sleep(POLL_MS);
  }
}

async function run() {
  const button = $("job-run");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const result = await adminApi("POST", "/admin/jobs/price-packages/");
    if (result.status === 202 && result.data && result.data.task_id) {
      remember(result.data.task_id);
      loadAudit();
      await follow(result.data.task_id);
    } else {
      $("job-status").textContent = `Задача не запущена (ответ ${result.status}).`;
    }
  } catch (error) {
    if (!(error instanceof TokenRefused)) {
      showBanner(error);
      $("job-status").textContent = "Задача не запущена: нет ответа сервера.";
    }
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

export function startJobs() {
  $("job-run").addEventListener("click", run);
  let kept = null;
  try {
    kept = sessionStorage.getItem(JOB_KEY);
  } catch {
    kept = null;
  }
  if (kept) follow(kept);
}

// The operators' console: asks for the key once per tab, says whose it is, then shows the daily costs, the
// backlog, the pricing job, the transport-company binding and the audit trail, all through the operator
// endpoints of the public API.

import { $ } from "../lib/dom.js";
import { bannerMessage, clearBanner, showBanner } from "../lib/banner.js";
import { adminApi, forgetToken, getToken, onRefused, setToken, TokenRefused } from "./operator.js";
import { loadCosts, startCosts } from "./costs.js";
import { startBacklog, stopBacklog } from "./backlog.js";
import { startJobs } from "./jobs.js";
import { startBind } from "./bind.js";
import { loadAudit, startAudit } from "./audit.js";

let started = false;

function refusal(detail) {
  if (/not configured/i.test(detail)) {
    return "Вход оператора не настроен на сервере (нет ни одного оператора, ADMIN_TOKEN не задан).";
  }
  return "Неверный токен.";
}

/** The signed-in operator's name in the header; null hides it. */
function showOperator(name) {
  $("whoami-name").textContent = name || "";
  $("whoami").hidden = !name;
}

function showLogin(message) {
  stopBacklog();
  showOperator(null);
  $("console").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("token-error").textContent = message || "";
  $("token-error").hidden = !message;
  if (message) $("token").setAttribute("aria-invalid", "true");
  else $("token").removeAttribute("aria-invalid");
  $("token").focus();
}

function showConsole(operator) {
  $("login").hidden = true;
  $("console").hidden = false;
  $("logout").hidden = false;
  showOperator(operator);
  if (!started) {
    started = true;
    startCosts();
    startJobs();
    startBind();
    startAudit();
  }
  startBacklog();
  loadCosts();
  loadAudit();
}

/** Whose key this tab holds (GET /admin/me/); throws TokenRefused when the server does not take it. */
async function whoAmI() {
  const result = await adminApi("GET", "/admin/me/");
  return result.status === 200 && result.data ? result.data.operator : null;
}

/** A kept key: the console at once, the operator's name once the server says whose key it is. */
async function resume() {
  showConsole(null);
  try {
    showOperator(await whoAmI());
  } catch (error) {
    if (!(error instanceof TokenRefused)) showBanner(error);
  }
}

/** Try the key on the read-only GET /admin/me/; keep it only if the server takes it. */
async function logIn(event) {
  event.preventDefault();
  const token = $("token").value;
  if (!token) {
    showLogin("Введите токен.");
    return;
  }
  setToken(token);
  const button = $("login-submit");
  button.disabled = true;
  try {
    const operator = await whoAmI();
    $("token").value = "";
    showConsole(operator);
    $("main").focus(); // the console replaced the form the focus was in
  } catch (error) {
    if (!(error instanceof TokenRefused)) {
      forgetToken();
      showLogin(bannerMessage(error));
    }
  } finally {
    button.disabled = false;
  }
}

function start() {
  onRefused((detail) => showLogin(refusal(detail)));
  $("login-form").addEventListener("submit", logIn);
  $("logout").addEventListener("click", () => {
    forgetToken();
    clearBanner();
    showLogin(null);
  });
  if (getToken()) resume();
  else showLogin(null);
}

start();

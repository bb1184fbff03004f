// The operators' console: asks for the token once per tab, then shows the daily costs, the backlog, the
// pricing job and the transport-company binding, all through the operator endpoints of the public API.

import { $ } from "../lib/dom.js";
import { bannerMessage, clearBanner } from "../lib/banner.js";
import { adminApi, forgetToken, getToken, onRefused, setToken, TokenRefused } from "./operator.js";
import { loadCosts, startCosts } from "./costs.js";
import { startBacklog, stopBacklog } from "./backlog.js";
import { startJobs } from "./jobs.js";
import { startBind } from "./bind.js";

let started = false;

function refusal(detail) {
  if (/not configured/i.test(detail)) return "Вход оператора не настроен на сервере (ADMIN_TOKEN не задан).";
  return "Неверный токен.";
}

function showLogin(message) {
  stopBacklog();
  $("console").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("token-error").textContent = message || "";
  $("token-error").hidden = !message;
  if (message) $("token").setAttribute("aria-invalid", "true");
  else $("token").removeAttribute("aria-invalid");
  $("token").focus();
}

function showConsole() {
  $("login").hidden = true;
  $("console").hidden = false;
  $("logout").hidden = false;
  if (!started) {
    started = true;
    startCosts();
    startJobs();
    startBind();
  }
  startBacklog();
  loadCosts();
}

/** Try the token on a read-only operator endpoint; keep it only if the server takes it. */
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
    await adminApi("GET", "/admin/stats/backlog/");
    $("token").value = "";
    showConsole();
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
  if (getToken()) showConsole();
  else showLogin(null);
}

start();

// The registration form: the server's bounds checked before sending, the server's 422 shown at the fields.

import { $ } from "../lib/dom.js";
import { bannerMessage, showBanner } from "../lib/banner.js";
import { ServiceError, retryAfterSeconds, send } from "../lib/api.js";
import { tooManyRegistrations } from "../lib/format.js";
import { FIELDS, splitErrors, validatePackage } from "../lib/validation.js";
import { api } from "./session.js";
import { loadTypes, types } from "./types.js";
import { track } from "./registrations.js";

let rules = null;
let idempotencyKey = null;

function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes); // unlike crypto.randomUUID, available on plain http too
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The bounds the API validates with, served by the app from its own schema: page and API cannot disagree. */
export async function loadRules() {
  if (rules) return rules;
  const result = await send("GET", "/web/package-rules.json");
  if (result.status === 200 && result.data) rules = result.data;
  return rules;
}

function setFieldError(field, message) {
  const input = $(field);
  const error = $(`${field}-error`);
  const described = (input.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
  const rest = described.filter((id) => id !== error.id);
  error.textContent = message || "";
  error.hidden = !message;
  if (message) {
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", [error.id, ...rest].join(" "));
  } else {
    input.removeAttribute("aria-invalid");
    if (rest.length) input.setAttribute("aria-describedby", rest.join(" "));
    else input.removeAttribute("aria-describedby");
  }
}

function setFormError(message) {
  const node = $("form-error");
  node.textContent = message || "";
  node.hidden = !message;
}

function clearErrors() {
  FIELDS.forEach((field) => setFieldError(field, null));
  setFormError(null);
}

function focusFirstInvalid() {
  const first = FIELDS.find((field) => $(field).getAttribute("aria-invalid") === "true");
  if (first) $(first).focus();
}

function showServerErrors(detail) {
  const { byField, other } = splitErrors(detail, FIELDS);
  for (const [field, message] of Object.entries(byField)) setFieldError(field, message);
  if (other.length || !Object.keys(byField).length) {
    setFormError(other.length ? other.join(" ") : "Сервер не принял данные. Проверьте поля формы.");
  }
  focusFirstInvalid();
}

async function submit(body) {
  // The same key on a retry after a lost answer: the server registers the parcel at most once.
  idempotencyKey = idempotencyKey || randomKey();
  const result = await api("POST", "/packages/", body, { "Idempotency-Key": idempotencyKey });
  if (result.status === 202 && result.data && result.data.status_id) {
    idempotencyKey = null;
    const typeName = $("type_id").selectedOptions[0].textContent;
    track({ statusId: result.data.status_id, name: body.name, type: typeName });
    $("register-form").reset();
    $("name").focus();
  } else if (result.status === 422) {
    idempotencyKey = null;
    showServerErrors(result.data && result.data.detail);
  } else if (result.status === 429) {
    // Refused before anything was stored: the same parcel may be sent again, with the same key, once it is time.
    setFormError(tooManyRegistrations(retryAfterSeconds(result.headers.get("Retry-After"))));
  } else {
    setFormError(`Сервер ответил ${result.status}. Попробуйте ещё раз.`);
  }
}

async function onSubmit(event) {
  event.preventDefault();
  clearErrors();
  const button = $("submit");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    if (!types.length) await loadTypes();
    if (!(await loadRules())) throw new Error("the form's rules did not load");
    const values = Object.fromEntries(FIELDS.map((field) => [field, $(field).value]));
    const { body, errors } = validatePackage(values, rules);
    if (Object.keys(errors).length) {
      for (const [field, message] of Object.entries(errors)) setFieldError(field, message);
      focusFirstInvalid();
      return;
    }
    await submit(body);
  } catch (error) {
    showBanner(error);
    if (error instanceof ServiceError && error.kind === "limited") {
      setFormError(`Посылка не отправлена. ${bannerMessage(error)}`);
    } else {
      setFormError("Посылка не отправлена: повторите, когда связь восстановится.");
    }
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

export function startForm() {
  $("register-form").addEventListener("submit", onSubmit);
  $("register-form").addEventListener("input", () => {
    idempotencyKey = null; // another parcel now, not a retry of the last one
  });
  for (const field of FIELDS) {
    $(field).addEventListener("input", () => {
      if ($(field).getAttribute("aria-invalid") === "true") setFieldError(field, null);
    });
  }
}

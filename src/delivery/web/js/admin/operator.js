// The operator's token: kept in this tab's sessionStorage only (never in an address), sent as X-Admin-Token.

import { send } from "../lib/api.js";
import { clearBanner } from "../lib/banner.js";

const TOKEN_KEY = "delivery.admin.token";

/** Raised when the server refuses the token (401/403): the console goes back to the token form. */
export class TokenRefused extends Error {
  constructor(detail) {
    super("token refused");
    this.detail = detail;
  }
}

const listeners = [];
let memory = null; // the token, also while sessionStorage is off

export function onRefused(listener) {
  listeners.push(listener);
}

export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function setToken(token) {
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // storage off (private mode): the token is still held by this page while it is open
  }
  memory = token;
}

export function forgetToken() {
  memory = null;
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // nothing kept
  }
}

/** An operator request; a refused token forgets it, tells the page, and throws TokenRefused. */
export async function adminApi(method, path, options = {}) {
  const token = memory ?? getToken() ?? "";
  const result = await send(method, path, { ...options, headers: { "X-Admin-Token": token, ...options.headers } });
  clearBanner();
  if (result.status === 401 || result.status === 403) {
    const detail = result.data && typeof result.data.detail === "string" ? result.data.detail : "";
    forgetToken();
    listeners.forEach((listener) => listener(detail));
    throw new TokenRefused(detail);
  }
  return result;
}

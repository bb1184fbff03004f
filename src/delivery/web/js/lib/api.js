// The HTTP client both pages use: JSON in and out, and the failures a person must be told about.

export class ServiceError extends Error {
  /** kind: "network" (no answer), "unavailable" (503), "limited" (429 where the page cannot go on) or "server". */
  constructor(kind, retryAfter) {
    super(kind);
    this.kind = kind;
    this.retryAfter = retryAfter || null;
  }
}

/**
 * One request. `body` is sent as JSON; `rawBody` is JSON text sent as it is (an id too large for a JS number).
 * Resolves to {status, data, text, headers} for every answer below 500; throws a ServiceError otherwise.
 */
export async function send(method, path, { body, rawBody, headers } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json", ...headers } };
  if (body !== undefined || rawBody !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = rawBody !== undefined ? rawBody : JSON.stringify(body);
  }
  let response;
  let text;
  try {
    response = await fetch(path, init);
    text = await response.text();
  } catch {
    throw new ServiceError("network");
  }
  if (response.status === 503) throw new ServiceError("unavailable", response.headers.get("Retry-After"));
  if (response.status >= 500) throw new ServiceError("server");
  return { status: response.status, data: parseJson(text), text, headers: response.headers };
}

/**
 * The seconds a Retry-After field asks to wait (delay-seconds, or an HTTP date, counted from `now`), or null
 * when it gives none.
 */
export function retryAfterSeconds(value, now = Date.now()) {
  if (value == null) return null;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text);
  if (!/[A-Za-z]/.test(text)) return null;
  const date = Date.parse(text);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - now) / 1000));
}

export function parseJson(text) {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/**
 * The digits of an integer member of a JSON object's text, exactly: JSON.parse turns an id above 2^53
 * (the API allows company ids up to 2^63 - 1) into a rounded number.
 */
export function exactInteger(text, name) {
  const match = new RegExp(`"${name}"\\s*:\\s*(-?\\d+)`).exec(text || "");
  return match ? match[1] : null;
}

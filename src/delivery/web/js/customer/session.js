// The customer's requests: a 401 opens a session (a cookie the page never sees) and the request is made again.

import { ServiceError, send } from "../lib/api.js";
import { clearBanner } from "../lib/banner.js";

let opening = null;

function openSession() {
  // Concurrent 401s share one new session.
  if (!opening) {
    opening = send("GET", "/sessions/new/").finally(() => {
      opening = null;
    });
  }
  return opening;
}

export async function api(method, path, body, headers) {
  const options = { body, headers };
  let result = await send(method, path, options);
  if (result.status === 401) {
    const opened = await openSession();
    // Sessions opened from one address are limited: over it, the caller waits as the answer asks.
    if (opened.status === 429) throw new ServiceError("limited", opened.headers.get("Retry-After"));
    if (opened.status !== 204) throw new ServiceError("server");
    result = await send(method, path, options);
  }
  clearBanner();
  return result;
}

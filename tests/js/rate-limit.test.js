// The customer page over a rate limit (429): a status poll waits the Retry-After seconds and polls again, never
// giving the registration up; a refused registration says how long to wait.
import assert from "node:assert/strict";
import { afterEach, beforeEach, mock, test } from "node:test";

import { installPage, settle } from "./fake-page.js";
import { retryAfterSeconds } from "../../src/delivery/web/js/lib/api.js";
import { formatWait, tooManyRegistrations } from "../../src/delivery/web/js/lib/format.js";
import { track } from "../../src/delivery/web/js/customer/registrations.js";
import { startForm } from "../../src/delivery/web/js/customer/form.js";
import { types } from "../../src/delivery/web/js/customer/types.js";

const STATUS_ID = "6f1c2a3e-0000-4000-8000-000000000001";
const STATUS_PATH = `/packages/status/${STATUS_ID}/`;
const LIMITED = (seconds) => ({
  status: 429,
  headers: { "Retry-After": String(seconds), RateLimit: `"reads";r=0;t=${seconds}` },
  body: { detail: `too many requests: the limit of reads is 1200 per 1 minute; try again in ${seconds} s` },
});
const PENDING = { status: 200, body: { status_id: STATUS_ID, state: "pending", done: false, error: false } };
const REGISTERED = {
  status: 200,
  body: { status_id: STATUS_ID, state: "registered", done: true, error: false, error_message: null, package_id: 42 },
};
const LIST = { status: 200, body: { items: [], total: 0, page: 1, size: 10, pages: 0 } };
const PACKAGE = { status: 200, body: { id: 42, name: "Книги", delivery_cost_rub: "123.45" } };
// What the server serves today (tests/test_web.py checks the served rules are the API's).
const RULES = {
  name: { min_length: 1, max_length: 255 },
  weight_kg: { gt: "0", le: "1000", decimal_places: 3 },
  type_id: { ge: "1", le: "2147483647" },
  content_value_usd: { ge: "0", le: "1000000000", decimal_places: 2 },
};

beforeEach(() => mock.timers.enable({ apis: ["setTimeout"] }));
afterEach(() => mock.timers.reset());

/** Moves the clock on by `ms`, letting what becomes ready run (the fetches, the awaits after them). */
async function advance(ms) {
  mock.timers.tick(ms);
  for (let i = 0; i < 10; i += 1) await settle();
}

function registrationItem(page) {
  const [item] = page.byId("registrations").children;
  return item;
}

test("a 429 on a status poll waits its Retry-After seconds and polls again, the registration still followed", async () => {
  const page = installPage({
    [STATUS_PATH]: [LIMITED(7), PENDING, REGISTERED],
    "/packages/?page=1&size=10": [LIST],
    "/packages/42/": [PACKAGE],
  });
  track({ statusId: STATUS_ID, name: "Книги", type: "Разное" });
  const item = registrationItem(page);

  await advance(300); // the first poll: 429
  assert.equal(page.requestsTo(STATUS_PATH).length, 1);
  assert.equal(item.dataset.state, "pending", "a 429 does not end the registration");
  assert.match(item.textContent, /через 7 секунд/);
  assert.deepEqual(
    JSON.parse(sessionStorage.getItem("delivery.pending")).map((reg) => reg.statusId),
    [STATUS_ID],
    "still resumed after a reload",
  );

  await advance(6999);
  assert.equal(page.requestsTo(STATUS_PATH).length, 1, "no poll before Retry-After has passed");
  await advance(1);
  assert.equal(page.requestsTo(STATUS_PATH).length, 2, "polled again once it has");
  assert.equal(item.dataset.state, "pending");
  assert.doesNotMatch(item.textContent, /секунд/, "the wait is no longer shown");

  await advance(5000); // the backoff goes on as before
  assert.equal(page.requestsTo(STATUS_PATH).length, 3);
  assert.equal(item.dataset.state, "registered");
  assert.match(item.textContent, /Посылка № 42/);
  assert.deepEqual(JSON.parse(sessionStorage.getItem("delivery.pending")), []);
});

test("a 429 without a usable Retry-After waits the poll's own backoff, and polls again", async () => {
  const page = installPage({
    [STATUS_PATH]: [{ status: 429, body: { detail: "too many requests" } }, REGISTERED],
    "/packages/?page=1&size=10": [LIST],
    "/packages/42/": [PACKAGE],
  });
  track({ statusId: STATUS_ID, name: "Книги", type: "Разное" });
  const item = registrationItem(page);
  await advance(300);
  assert.equal(item.dataset.state, "pending");
  await advance(600);
  assert.equal(page.requestsTo(STATUS_PATH).length, 2);
  assert.equal(item.dataset.state, "registered");
});

test("other answers to a poll still end it: 404, and a status that failed", async () => {
  const page = installPage({ [STATUS_PATH]: [{ status: 404, body: { detail: "not found" } }] });
  track({ statusId: STATUS_ID, name: "Книги", type: "Разное" });
  await advance(300);
  assert.equal(registrationItem(page).dataset.state, "failed");
});

test("a 429 opening a new session during a poll: the banner says the wait, and the poll comes back after it", async () => {
  const page = installPage({
    [STATUS_PATH]: [{ status: 401, body: { detail: "no session" } }, REGISTERED],
    "/sessions/new/": [{ status: 429, headers: { "Retry-After": "30" }, body: { detail: "too many requests" } }],
    "/packages/?page=1&size=10": [LIST],
    "/packages/42/": [PACKAGE],
  });
  track({ statusId: STATUS_ID, name: "Книги", type: "Разное" });
  const item = registrationItem(page);
  await advance(300);
  assert.equal(item.dataset.state, "pending");
  assert.equal(page.byId("banner").textContent, "Слишком много запросов. Повторите через 30 секунд.");
  await advance(29_999);
  assert.equal(page.requestsTo(STATUS_PATH).length, 1);
  await advance(1);
  assert.equal(item.dataset.state, "registered");
});

function fillForm(page) {
  types.splice(0, types.length, { id: 1, name: "misc" });
  page.byId("name").value = "Книги";
  page.byId("type_id").value = "1";
  page.byId("type_id").selectedOptions = [{ textContent: "Разное" }];
  page.byId("weight_kg").value = "1,5";
  page.byId("content_value_usd").value = "10";
}

test("a registration refused with 429 says, in Russian, how long to wait; the form keeps its values", async () => {
  const page = installPage({
    "/web/package-rules.json": [{ status: 200, body: RULES }],
    "/packages/": [
      {
        status: 429,
        headers: { "Retry-After": "42" },
        body: { detail: "too many requests: the limit of registrations is 200 per 1 minute; try again in 42 s" },
      },
    ],
  });
  startForm();
  fillForm(page);
  await page.byId("register-form").dispatch("submit");
  const message = page.byId("form-error");
  assert.equal(message.hidden, false);
  assert.equal(message.textContent, tooManyRegistrations(42));
  assert.match(message.textContent, /через 42 секунды/);
  assert.doesNotMatch(message.textContent, /429/);
  assert.equal(page.byId("name").value, "Книги");
  assert.equal(page.byId("registrations").children.length, 0, "nothing followed: nothing was accepted");
  assert.equal(page.byId("submit").disabled, false);
});

test("a registration whose new session is refused with 429 says the wait too", async () => {
  const page = installPage({
    "/web/package-rules.json": [{ status: 200, body: RULES }],
    "/packages/": [{ status: 401, body: { detail: "no session" } }],
    "/sessions/new/": [{ status: 429, headers: { "Retry-After": "5" }, body: { detail: "too many requests" } }],
  });
  startForm();
  fillForm(page);
  await page.byId("register-form").dispatch("submit");
  assert.equal(
    page.byId("form-error").textContent,
    "Посылка не отправлена. Слишком много запросов. Повторите через 5 секунд.",
  );
});

test("the wait, said in Russian: seconds, then minutes and hours rounded up", () => {
  assert.equal(formatWait(1), "1 секунду");
  assert.equal(formatWait(2), "2 секунды");
  assert.equal(formatWait(7), "7 секунд");
  assert.equal(formatWait(21), "21 секунду");
  assert.equal(formatWait(42), "42 секунды");
  assert.equal(formatWait(60), "1 минуту");
  assert.equal(formatWait(61), "2 минуты");
  assert.equal(formatWait(300), "5 минут");
  assert.equal(formatWait(3600), "1 час");
  assert.equal(formatWait(7201), "3 часа");
  assert.equal(tooManyRegistrations(null), "Слишком много посылок подряд. Подождите немного и отправьте снова.");
});

test("Retry-After: seconds, or an HTTP date; anything else is no answer", () => {
  const now = Date.parse("2026-12-08T10:00:00Z");
  assert.equal(retryAfterSeconds("42", now), 42);
  assert.equal(retryAfterSeconds(" 0 ", now), 0);
  assert.equal(retryAfterSeconds("Tue, 08 Dec 2026 10:00:30 GMT", now), 30);
  assert.equal(retryAfterSeconds("Tue, 08 Dec 2026 09:59:00 GMT", now), 0);
  assert.equal(retryAfterSeconds(null, now), null);
  assert.equal(retryAfterSeconds("soon", now), null);
  assert.equal(retryAfterSeconds("-5", now), null);
});

// The customer's page: built on the public API only (sessions, types, packages, registration status).
// Money and weights stay strings from the server to the screen: never parsed into binary floats.
"use strict";

(() => {
  const PAGE_SIZE = 10;
  const POLL_FIRST_MS = 300;
  const POLL_MAX_MS = 5000;
  const FIELDS = ["name", "type_id", "weight_kg", "content_value_usd"]; // in the order of the form
  const NAME_MAX = 255;
  const WEIGHT = { places: 3, max: "1000", maxText: "1000" };
  const VALUE = { places: 2, max: "1000000000", maxText: "1\u00a0000\u00a0000\u00a0000" };
  const TYPE_LABELS = { clothes: "Одежда", electronics: "Электроника", misc: "Разное" };
  const NOT_CALCULATED = "Не рассчитано";
  const GROUP_SEPARATOR = "\u202f"; // a narrow no-break space between thousands
  const PENDING_KEY = "delivery.pending";

  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  const state = {
    types: [],
    page: 1,
    pages: 0,
    type: "",
    hasCost: "",
    listSeq: 0,
    idempotencyKey: null,
    sessionOpening: null,
  };

  // --- Text helpers -------------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child != null) node.append(child); // strings become text nodes: never parsed as HTML
    }
    return node;
  }

  function groupDigits(digits) {
    return digits.replace(/\B(?=(\d{3})+(?!\d))/g, GROUP_SEPARATOR);
  }

  /** "5617.16" -> "5 617,16": string work only, the digits are the server's. */
  function formatDecimal(text) {
    const value = String(text);
    const match = /^(-?)(\d+)(?:\.(\d+))?$/.exec(value);
    if (!match) return value;
    const [, sign, whole, fraction] = match;
    return sign + groupDigits(whole) + (fraction ? "," + fraction : "");
  }

  function formatCost(cost) {
    return cost == null ? NOT_CALCULATED : `${formatDecimal(cost)}\u00a0₽`;
  }

  function costNode(cost) {
    if (cost == null) return el("span", { class: "not-calculated", text: NOT_CALCULATED });
    return el("span", { class: "cost", text: formatCost(cost) });
  }

  function formatDate(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return String(iso);
    return date.toLocaleString("ru-RU", { dateStyle: "medium", timeStyle: "short" });
  }

  function typeLabel(type) {
    return TYPE_LABELS[type.name] || type.name;
  }

  function plural(n, one, few, many) {
    const mod10 = n % 10;
    const mod100 = n % 100;
    if (mod10 === 1 && mod100 !== 11) return one;
    if (mod10 >= 2 && mod10 <= 4 && (mod100 < 12 || mod100 > 14)) return few;
    return many;
  }

  function randomKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes); // unlike crypto.randomUUID, available on plain http too
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // --- Decimal strings, compared without floats ---------------------------------------------------------

  /** "0012.500" -> {whole: "12", fraction: "5"}; null when it is not a plain non-negative decimal. */
  function parseDecimal(text) {
    const match = /^(\d*)(?:\.(\d*))?$/.exec(text);
    if (!match || (match[1] === "" && !match[2])) return null;
    return { whole: match[1].replace(/^0+/, ""), fraction: (match[2] || "").replace(/0+$/, "") };
  }

  function compareDecimal(a, b) {
    if (a.whole.length !== b.whole.length) return a.whole.length < b.whole.length ? -1 : 1;
    if (a.whole !== b.whole) return a.whole < b.whole ? -1 : 1;
    const width = Math.max(a.fraction.length, b.fraction.length);
    const fa = a.fraction.padEnd(width, "0");
    const fb = b.fraction.padEnd(width, "0");
    return fa === fb ? 0 : fa < fb ? -1 : 1;
  }

  const isZero = (d) => d.whole === "" && d.fraction === "";

  // --- HTTP ---------------------------------------------------------------------------------------------

  class ServiceError extends Error {
    /** kind: "network" (no answer), "unavailable" (503) or "server" (another 5xx). */
    constructor(kind, retryAfter) {
      super(kind);
      this.kind = kind;
      this.retryAfter = retryAfter || null;
    }
  }

  async function send(method, path, body, headers) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json", ...headers } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
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
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    return { status: response.status, data, headers: response.headers };
  }

  function openSession() {
    // Concurrent 401s share one new session.
    if (!state.sessionOpening) {
      state.sessionOpening = send("GET", "/sessions/new/").finally(() => {
        state.sessionOpening = null;
      });
    }
    return state.sessionOpening;
  }

  /** A request to the API; on 401 a session is opened and the request made once more. */
  async function api(method, path, body, headers) {
    let result = await send(method, path, body, headers);
    if (result.status === 401) {
      const opened = await openSession();
      if (opened.status !== 204) throw new ServiceError("server");
      result = await send(method, path, body, headers);
    }
    clearBanner();
    return result;
  }

  // --- The banner: the service or the network is down ---------------------------------------------------

  function showBanner(error) {
    let message;
    if (error instanceof ServiceError && error.kind === "unavailable") {
      message = "Сервис временно недоступен, попробуйте позже.";
      if (error.retryAfter && /^\d+$/.test(error.retryAfter.trim())) {
        message += ` Повторите попытку через ${error.retryAfter.trim()} с.`;
      }
    } else if (error instanceof ServiceError && error.kind === "network") {
      message = "Нет связи с сервером. Проверьте подключение и попробуйте ещё раз.";
    } else if (error instanceof ServiceError) {
      message = "На сервере произошла ошибка. Попробуйте позже.";
    } else {
      console.error(error);
      message = "Что-то пошло не так. Обновите страницу.";
    }
    const region = $("banner");
    // New content inside the existing alert region is what screen readers announce.
    region.replaceChildren(el("div", { class: "banner" }, el("p", { text: message })));
  }

  function clearBanner() {
    $("banner").replaceChildren();
  }

  // --- Types --------------------------------------------------------------------------------------------

  async function loadTypes() {
    const select = $("type_id");
    try {
      const result = await api("GET", "/types/");
      if (result.status !== 200 || !Array.isArray(result.data)) throw new ServiceError("server");
      state.types = result.data;
    } catch (error) {
      select.replaceChildren(el("option", { value: "", text: "Типы не загрузились — нажмите «Обновить»" }));
      showBanner(error);
      return;
    }
    const chosen = select.value;
    select.replaceChildren(
      el("option", { value: "", text: "Выберите тип" }),
      ...state.types.map((t) => el("option", { value: String(t.id), text: typeLabel(t) })),
    );
    select.value = chosen;
    const filter = $("filter-type");
    const filtered = filter.value;
    filter.replaceChildren(
      el("option", { value: "", text: "Все типы" }),
      ...state.types.map((t) => el("option", { value: String(t.id), text: typeLabel(t) })),
    );
    filter.value = filtered;
  }

  // --- The form: the server's checks, made before sending, and the server's 422 shown at the fields ------

  function setFieldError(field, message) {
    const input = $(field);
    const error = $(`${field}-error`);
    const described = (input.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
    const rest = described.filter((id) => id !== error.id);
    if (message) {
      error.textContent = message;
      error.hidden = false;
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", [error.id, ...rest].join(" "));
    } else {
      error.textContent = "";
      error.hidden = true;
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

  function normalizeNumber(raw) {
    return raw.trim().replace(/\s+/g, "").replace(",", ".");
  }

  function checkNumber(raw, rules, { positive }) {
    const text = normalizeNumber(raw);
    if (text === "") return { error: "Заполните это поле" };
    if (text.startsWith("-")) return { error: positive ? "Должно быть больше 0" : "Не может быть отрицательной" };
    const value = parseDecimal(text);
    if (!value) return { error: "Введите число, например 1,25" };
    if (positive && isZero(value)) return { error: "Должно быть больше 0" };
    if (compareDecimal(value, parseDecimal(rules.max)) > 0) {
      return { error: `Должно быть не больше ${rules.maxText}` };
    }
    if (value.fraction.length > rules.places) {
      return { error: `Не больше ${rules.places} ${plural(rules.places, "знака", "знаков", "знаков")} после запятой` };
    }
    return { value: text };
  }

  /** The form's values as the API wants them (numbers as strings), or the errors per field. */
  function readForm() {
    const errors = {};
    const name = $("name").value.trim();
    const length = Array.from(name).length; // characters, as the server counts them
    if (length === 0) errors.name = "Укажите название";
    else if (length > NAME_MAX) errors.name = `Не длиннее ${NAME_MAX} символов (сейчас ${length})`;
    const weight = checkNumber($("weight_kg").value, WEIGHT, { positive: true });
    if (weight.error) errors.weight_kg = weight.error;
    const value = checkNumber($("content_value_usd").value, VALUE, { positive: false });
    if (value.error) errors.content_value_usd = value.error;
    const typeId = $("type_id").value;
    if (!/^\d+$/.test(typeId)) errors.type_id = "Выберите тип";
    const body = { name, weight_kg: weight.value, type_id: Number(typeId), content_value_usd: value.value };
    return { body, errors };
  }

  /** A Russian message for one of FastAPI's 422 errors; the server's own text when we do not know it. */
  function translate(error, field) {
    const ctx = error.ctx || {};
    const num = (x) => (x === undefined || x === null ? null : formatDecimal(String(x)));
    switch (error.type) {
      case "missing":
        return "Заполните это поле";
      case "string_too_short":
        return field === "name" ? "Укажите название" : "Слишком короткое значение";
      case "string_too_long":
        return num(ctx.max_length) ? `Не длиннее ${num(ctx.max_length)} символов` : "Слишком длинное значение";
      case "string_type":
        return "Введите текст";
      case "greater_than":
        return num(ctx.gt) ? `Должно быть больше ${num(ctx.gt)}` : error.msg;
      case "greater_than_equal":
        return num(ctx.ge) ? `Должно быть не меньше ${num(ctx.ge)}` : error.msg;
      case "less_than_equal":
        return num(ctx.le) ? `Должно быть не больше ${num(ctx.le)}` : error.msg;
      case "decimal_max_places":
        return num(ctx.decimal_places) ? `Не больше ${num(ctx.decimal_places)} знаков после запятой` : error.msg;
      case "decimal_parsing":
      case "decimal_type":
      case "finite_number":
        return "Введите число, например 1,25";
      case "int_type":
      case "int_parsing":
        return field === "type_id" ? "Выберите тип из списка" : "Введите целое число";
      case "extra_forbidden":
        return `Сервер не знает поле «${field}»`;
      case "value_error":
        if (field === "type_id") return "Такого типа больше нет. Обновите страницу и выберите тип из списка.";
        return `Недопустимое значение: ${error.msg}`;
      default:
        return error.msg || "Недопустимое значение";
    }
  }

  function showServerErrors(detail) {
    const shown = new Set();
    const other = [];
    for (const error of Array.isArray(detail) ? detail : []) {
      const loc = Array.isArray(error.loc) ? error.loc : [];
      const field = loc[0] === "body" ? loc[1] : undefined;
      if (FIELDS.includes(field)) {
        if (!shown.has(field)) setFieldError(field, translate(error, field));
        shown.add(field);
      } else {
        other.push(translate(error, field === undefined ? "" : String(field)));
      }
    }
    if (other.length || !shown.size) {
      setFormError(other.length ? other.join(" ") : "Сервер не принял данные. Проверьте поля формы.");
    }
    focusFirstInvalid();
  }

  function focusFirstInvalid() {
    const first = FIELDS.find((field) => $(field).getAttribute("aria-invalid") === "true");
    if (first) $(first).focus();
  }

  async function onSubmit(event) {
    event.preventDefault();
    clearErrors();
    if (!state.types.length) await loadTypes();
    const { body, errors } = readForm();
    if (Object.keys(errors).length) {
      for (const [field, message] of Object.entries(errors)) setFieldError(field, message);
      focusFirstInvalid();
      return;
    }
    // The same key on a retry after a lost answer: the server registers the parcel at most once.
    state.idempotencyKey = state.idempotencyKey || randomKey();
    const button = $("submit");
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      const result = await api("POST", "/packages/", body, { "Idempotency-Key": state.idempotencyKey });
      if (result.status === 202 && result.data && result.data.status_id) {
        state.idempotencyKey = null;
        const typeName = $("type_id").selectedOptions[0].textContent;
        track({ statusId: result.data.status_id, name: body.name, type: typeName });
        $("register-form").reset();
        $("name").focus();
      } else if (result.status === 422) {
        state.idempotencyKey = null;
        showServerErrors(result.data && result.data.detail);
      } else {
        setFormError(`Сервер ответил ${result.status}. Попробуйте ещё раз.`);
      }
    } catch (error) {
      showBanner(error);
      setFormError("Посылка не отправлена: повторите, когда связь восстановится.");
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  // --- Following a registration -------------------------------------------------------------------------

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

  function track(reg) {
    const pending = loadPending().filter((item) => item.statusId !== reg.statusId);
    savePending([...pending, reg]);
    const view = registrationItem(reg);
    view.set("pending", "Ожидает", "Принята, регистрируем…");
    $("registrations").prepend(view.item);
    $("registrations-empty").hidden = true;
    follow(reg, view);
  }

  async function follow(reg, view) {
    const path = `/packages/status/${encodeURIComponent(reg.statusId)}/`;
    let delay = POLL_FIRST_MS;
    for (;;) {
      await sleep(delay);
      delay = Math.min(delay * 2, POLL_MAX_MS);
      let result;
      try {
        result = await api("GET", path);
      } catch (error) {
        showBanner(error); // keep following: the answer comes once the service is back
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
      if (!status || !status.done) continue;
      forget(reg.statusId);
      if (status.error) {
        view.set("failed", "Ошибка", `Не зарегистрирована: ${status.error_message || "причина неизвестна"}`);
        return;
      }
      await showRegistered(reg, view, status.package_id);
      loadList();
      return;
    }
  }

  async function showRegistered(reg, view, packageId) {
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

  // --- The list of parcels ------------------------------------------------------------------------------

  function cell(label, content, className) {
    const td = el("td", { "data-label": label }, content);
    if (className) td.className = className;
    return td;
  }

  function parcelRow(p) {
    const open = el("button", {
      type: "button",
      class: "link-button",
      "aria-haspopup": "dialog",
      text: p.name,
    });
    open.addEventListener("click", () => openDetail(p.id, open));
    return el(
      "tr",
      { "data-id": String(p.id) },
      cell("№", String(p.id)),
      cell("Название", open, "name-cell"),
      cell("Тип", typeLabel(p.type)),
      cell("Вес, кг", formatDecimal(p.weight_kg), "num"),
      cell("Содержимое, $", formatDecimal(p.content_value_usd), "num"),
      cell("Доставка, ₽", costNode(p.delivery_cost_rub), "num"),
    );
  }

  async function loadList() {
    const seq = ++state.listSeq;
    const query = new URLSearchParams({ page: String(state.page), size: String(PAGE_SIZE) });
    if (state.type) query.set("type", state.type);
    if (state.hasCost) query.set("has_cost", state.hasCost);
    $("parcels").setAttribute("aria-busy", "true");
    let result;
    try {
      result = await api("GET", `/packages/?${query}`);
    } catch (error) {
      if (seq === state.listSeq) {
        showBanner(error);
        $("list-status").textContent = "Список не загрузился.";
        $("parcels").removeAttribute("aria-busy");
      }
      return;
    }
    if (seq !== state.listSeq) return; // a newer request (another page or filter) has been made meanwhile
    $("parcels").removeAttribute("aria-busy");
    if (result.status !== 200 || !result.data) {
      $("list-status").textContent = `Список не загрузился (ответ ${result.status}).`;
      return;
    }
    const data = result.data;
    if (!data.items.length && data.total > 0 && state.page > data.pages) {
      state.page = data.pages; // the page went past the end (fewer parcels now): show the last one
      loadList();
      return;
    }
    renderList(data);
  }

  function renderList(data) {
    state.pages = data.pages;
    const filtered = Boolean(state.type || state.hasCost);
    $("parcels-body").replaceChildren(...data.items.map(parcelRow));
    $("parcels").hidden = data.items.length === 0;
    let status;
    if (data.total === 0) {
      status = filtered ? "Нет посылок с такими фильтрами." : "Посылок пока нет. Зарегистрируйте первую.";
    } else {
      const noun = plural(data.total, "посылка", "посылки", "посылок");
      status = `${filtered ? "Найдено" : "Всего"}: ${data.total} ${noun}`;
    }
    $("list-status").textContent = status;
    $("pager").hidden = data.pages <= 1;
    $("page-info").textContent = `Страница ${data.page} из ${Math.max(data.pages, 1)}`;
    $("prev").disabled = data.page <= 1;
    $("next").disabled = data.page >= data.pages;
  }

  function goToPage(page, focusId) {
    state.page = page;
    loadList().then(() => {
      // Keep the keyboard where it was; a button that became disabled hands focus to its neighbour.
      const target = $(focusId);
      if (target.disabled) $(focusId === "next" ? "prev" : "next").focus();
    });
  }

  function onFilterChange() {
    state.type = $("filter-type").value;
    state.hasCost = $("filter-cost").value;
    state.page = 1;
    loadList();
  }

  // --- A parcel's detail --------------------------------------------------------------------------------

  let detailOpener = null;

  function detailRows(p) {
    const rows = [
      ["Номер", `№ ${p.id}`],
      ["Название", p.name],
      ["Тип", typeLabel(p.type)],
      ["Вес", `${formatDecimal(p.weight_kg)}\u00a0кг`],
      ["Стоимость содержимого", `${formatDecimal(p.content_value_usd)}\u00a0$`],
      ["Стоимость доставки", costNode(p.delivery_cost_rub)],
      ["Транспортная компания", p.transport_company_id == null ? "Не назначена" : `№ ${p.transport_company_id}`],
      ["Создана", el("time", { datetime: p.created_at, text: formatDate(p.created_at) })],
    ];
    return rows.flatMap(([term, value]) => [el("dt", { text: term }), el("dd", {}, value)]);
  }

  async function openDetail(packageId, opener) {
    detailOpener = opener;
    const dialog = $("detail");
    $("detail-heading").textContent = `Посылка № ${packageId}`;
    $("detail-fields").replaceChildren();
    $("detail-status").textContent = "Загрузка…";
    if (!dialog.open) dialog.showModal();
    $("detail-close").focus();
    let result;
    try {
      result = await api("GET", `/packages/${encodeURIComponent(packageId)}/`);
    } catch (error) {
      showBanner(error);
      $("detail-status").textContent = "Не удалось загрузить посылку.";
      return;
    }
    if (result.status === 404) {
      $("detail-status").textContent = "Посылка не найдена.";
      return;
    }
    if (result.status !== 200 || !result.data) {
      $("detail-status").textContent = `Не удалось загрузить посылку (ответ ${result.status}).`;
      return;
    }
    $("detail-status").textContent = "";
    $("detail-heading").textContent = result.data.name;
    $("detail-fields").replaceChildren(...detailRows(result.data));
  }

  function onDetailClosed() {
    if (detailOpener && detailOpener.isConnected) detailOpener.focus();
    detailOpener = null;
  }

  // --- Start --------------------------------------------------------------------------------------------

  async function ensureSession() {
    // A returning customer keeps their session: a new one is opened only when the server answers 401.
    await api("GET", "/packages/?size=1");
  }

  async function start() {
    $("register-form").addEventListener("submit", onSubmit);
    $("register-form").addEventListener("input", () => {
      state.idempotencyKey = null; // another parcel now, not a retry of the last one
    });
    for (const field of FIELDS) {
      $(field).addEventListener("input", () => {
        if ($(field).getAttribute("aria-invalid") === "true") setFieldError(field, null);
      });
    }
    $("filters").addEventListener("change", onFilterChange);
    $("filters").addEventListener("submit", (event) => event.preventDefault());
    $("prev").addEventListener("click", () => goToPage(Math.max(1, state.page - 1), "prev"));
    $("next").addEventListener("click", () => goToPage(state.page + 1, "next"));
    $("refresh").addEventListener("click", () => {
      if (!state.types.length) loadTypes();
      loadList();
    });
    $("detail-close").addEventListener("click", () => $("detail").close());
    $("detail").addEventListener("close", onDetailClosed);

    $("list-status").textContent = "Загрузка…";
    const types = loadTypes();
    try {
      await ensureSession();
    } catch (error) {
      showBanner(error);
      $("list-status").textContent = "Список не загрузился.";
      await types;
      return;
    }
    await Promise.all([types, loadList()]);
    for (const reg of loadPending()) {
      const view = registrationItem(reg);
      view.set("pending", "Ожидает", "Принята, регистрируем…");
      $("registrations").prepend(view.item);
      $("registrations-empty").hidden = true;
      follow(reg, view);
    }
  }

  start();
})();

// A stand-in for the browser, enough for the customer page's modules under Node's test runner: elements found
// by id (made on first use), the few DOM calls the page makes, sessionStorage, and fetch answered from a
// script of answers per path. Not a test file itself (tests/js/*.test.js are).

class FakeElement {
  constructor(tag, id) {
    this.tagName = String(tag).toUpperCase();
    this.id = id || "";
    this.attributes = new Map();
    this.children = [];
    this.dataset = {};
    this.hidden = false;
    this.disabled = false;
    this.value = "";
    this.selectedOptions = [];
    this.listeners = {};
    this.parent = null;
    this._text = "";
  }

  get isConnected() {
    return true;
  }

  get textContent() {
    return this._text + this.children.map((child) => child.textContent).join("");
  }

  set textContent(text) {
    this.children = [];
    this._text = String(text);
  }

  setAttribute(name, value) {
    this.attributes.set(name, String(value));
  }

  getAttribute(name) {
    return this.attributes.has(name) ? this.attributes.get(name) : null;
  }

  removeAttribute(name) {
    this.attributes.delete(name);
  }

  _adopt(nodes) {
    return nodes.map((node) => {
      const child = typeof node === "string" ? Object.assign(new FakeElement("#text"), { _text: node }) : node;
      child.parent = this;
      return child;
    });
  }

  append(...nodes) {
    this.children.push(...this._adopt(nodes));
  }

  prepend(...nodes) {
    this.children.unshift(...this._adopt(nodes));
  }

  replaceChildren(...nodes) {
    this._text = "";
    this.children = this._adopt(nodes);
  }

  addEventListener(type, listener) {
    (this.listeners[type] ||= []).push(listener);
  }

  dispatch(type, event = {}) {
    const full = { type, target: this, preventDefault() {}, ...event };
    return Promise.all((this.listeners[type] || []).map((listener) => listener(full)));
  }

  focus() {}

  reset() {}

  /** The descendants (depth first) matching `test`. */
  findAll(test) {
    const found = [];
    for (const child of this.children) {
      if (test(child)) found.push(child);
      found.push(...child.findAll(test));
    }
    return found;
  }
}

/**
 * Installs the fake globals. `answers` maps a path to a list of answers given in turn (the last one again once
 * the list is used up): {status, body, headers}. Returns the page: its elements, the requests made.
 */
export function installPage(answers = {}) {
  const elements = new Map();
  const requests = [];
  const storage = new Map();
  const queues = new Map(Object.entries(answers).map(([path, list]) => [path, [...list]]));
  const page = {
    elements,
    requests,
    byId(id) {
      if (!elements.has(id)) elements.set(id, new FakeElement("div", id));
      return elements.get(id);
    },
    /** The requests made to a path. */
    requestsTo(path) {
      return requests.filter((request) => request.path === path);
    },
    answer(path, list) {
      queues.set(path, [...list]);
    },
  };
  globalThis.document = {
    getElementById: (id) => page.byId(id),
    createElement: (tag) => new FakeElement(tag),
    createElementNS: (_ns, tag) => new FakeElement(tag),
  };
  globalThis.sessionStorage = {
    getItem: (key) => (storage.has(key) ? storage.get(key) : null),
    setItem: (key, value) => storage.set(key, String(value)),
    removeItem: (key) => storage.delete(key),
  };
  globalThis.fetch = async (path, init = {}) => {
    requests.push({ path, method: init.method || "GET", headers: init.headers || {}, body: init.body });
    const queue = queues.get(path);
    if (!queue || !queue.length) throw new TypeError(`no answer for ${path}`);
    const answer = queue.length > 1 ? queue.shift() : queue[0];
    const text = answer.body === undefined ? "" : JSON.stringify(answer.body);
    return {
      status: answer.status,
      headers: new Headers(answer.headers || {}),
      text: async () => text,
    };
  };
  return page;
}

/** Lets the promises that are ready run (fetch's answers, the awaits after them): a macrotask's turn. */
export function settle() {
  return new Promise((resolve) => setImmediate(resolve));
}

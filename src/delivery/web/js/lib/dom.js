// DOM helpers. Text always goes in as text nodes or attribute values: never parsed as HTML.

export const $ = (id) => document.getElementById(id);

function build(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (key === "class") node.setAttribute("class", value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child != null) node.append(child); // strings become text nodes
  }
  return node;
}

/** An HTML element: el("p", { class: "hint", text: "…" }, child, …). */
export function el(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element, the same way. */
export function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

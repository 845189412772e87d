// Shared pieces of every screen: loading, empty and error states, forms that show the API's
// errors next to the fields they name, paging, copying, confirming.

import { ApiError } from "./api.js";
import { h, mount, uid } from "./dom.js";

export function loading(what = "Loading") {
  return h("p", { class: "state loading", role: "status" }, `${what}…`);
}

export function empty(message, ...actions) {
  return h("div", { class: "state empty" }, h("p", {}, message), actions.length ? h("p", {}, actions) : null);
}

/** The message people read for a failure; a 503 says when to try again. */
export function describe(error) {
  if (error instanceof ApiError) {
    const code = error.code ? ` (${error.code})` : "";
    const retry = error.retryAfter ? ` Try again in ${error.retryAfter} s.` : "";
    return `${error.message}${code}${retry}`;
  }
  return String((error && error.message) || error);
}

export function errorBox(error, retry) {
  return h(
    "div",
    { class: "state error", role: "alert" },
    h("p", {}, describe(error)),
    retry ? h("button", { type: "button", onclick: retry }, "Try again") : null,
  );
}

/**
 * Shows a loading state in `container`, then what `render` builds from `load()`'s result,
 * or the error with a way to try again.
 */
export async function loadInto(container, load, render, what) {
  mount(container, loading(what));
  try {
    const value = await load();
    mount(container, render(value));
  } catch (error) {
    mount(container, errorBox(error, () => loadInto(container, load, render, what)));
  }
}

/**
 * A labelled input. `type`: text, number, password, textarea, select (with `options`
 * [{value, label}] or strings), checkbox, date, datetime-local, file.
 */
export function field({ label, name, type = "text", value, required, options, hint, placeholder, ...rest }) {
  const id = uid(name || "field");
  const messageId = `${id}-message`;
  const hintId = hint ? `${id}-hint` : null;
  const described = [hintId, messageId].filter(Boolean).join(" ");
  let input;
  if (type === "select") {
    input = h(
      "select",
      { id, name, required, "aria-describedby": described, ...rest },
      (options || []).map((option) => {
        const item = typeof option === "string" ? { value: option, label: option } : option;
        return h("option", { value: item.value, selected: String(item.value) === String(value ?? "") }, item.label);
      }),
    );
  } else if (type === "textarea") {
    input = h("textarea", { id, name, required, placeholder, "aria-describedby": described, ...rest }, value ?? "");
  } else if (type === "checkbox") {
    input = h("input", { id, name, type, checked: Boolean(value), "aria-describedby": described, ...rest });
  } else {
    input = h("input", { id, name, type, value: value ?? "", required, placeholder, "aria-describedby": described, ...rest });
  }
  const wrapper = h(
    "div",
    { class: `field field-${type}`, dataset: { field: name || "" } },
    type === "checkbox"
      ? h("label", { for: id, class: "checkbox" }, input, " ", label)
      : [h("label", { for: id }, label, required ? h("span", { class: "required", "aria-hidden": "true" }, " *") : null), input],
    hint ? h("p", { class: "hint", id: hintId }, hint) : null,
    h("p", { class: "field-error", id: messageId, role: "alert" }),
  );
  return wrapper;
}

/** The values of a form's named inputs: checkboxes as booleans, everything else as strings. */
export function valuesOf(form) {
  const values = {};
  for (const element of form.elements) {
    if (!element.name || element.disabled) continue;
    if (element.type === "checkbox") values[element.name] = element.checked;
    else if (element.type === "file") values[element.name] = element.files;
    else values[element.name] = element.value;
  }
  return values;
}

/** Clears the messages `showErrors` put on a form. */
export function clearErrors(form) {
  for (const message of form.querySelectorAll(".field-error, .form-error")) message.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

/**
 * Puts each error the API named a field for next to that field's input (matched by `name`,
 * or by a `data-error-field` given to `aliases`), and the rest at the top of the form.
 */
export function showErrors(form, error, aliases = {}) {
  clearErrors(form);
  const general = form.querySelector(".form-error");
  const leftover = [];
  const fieldErrors = error instanceof ApiError ? error.errors : [];
  let first = null;
  for (const item of fieldErrors) {
    const name = aliases[item.field] || item.field;
    const wrapper = [...form.querySelectorAll(".field")].find((node) => node.dataset.field === name);
    if (!wrapper) {
      leftover.push(`${item.field}: ${item.message}`);
      continue;
    }
    const message = wrapper.querySelector(".field-error");
    message.textContent = message.textContent ? `${message.textContent} ${item.message}` : item.message;
    const input = wrapper.querySelector("input, select, textarea");
    if (input) {
      input.setAttribute("aria-invalid", "true");
      first = first || input;
    }
  }
  if (general) {
    const lines = fieldErrors.length && !leftover.length ? [] : [describe(error), ...leftover];
    general.textContent = lines.join(" ");
  }
  if (first) first.focus();
}

/**
 * A form whose submit runs `onSubmit(values, form)`; while it runs the button is disabled,
 * and an API error lands next to the fields it names.
 */
export function form({ fields, submit = "Save", onSubmit, onCancel, aliases, label, extra }) {
  const button = h("button", { type: "submit", class: "primary" }, submit);
  const element = h(
    "form",
    { class: "form", novalidate: true, "aria-label": label },
    h("p", { class: "form-error", role: "alert" }),
    fields,
    h(
      "div",
      { class: "actions" },
      button,
      onCancel ? h("button", { type: "button", onclick: onCancel }, "Cancel") : null,
      extra || null,
    ),
  );
  element.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(element);
    button.disabled = true;
    element.setAttribute("aria-busy", "true");
    try {
      await onSubmit(valuesOf(element), element);
    } catch (error) {
      showErrors(element, error, aliases);
    } finally {
      button.disabled = false;
      element.removeAttribute("aria-busy");
    }
  });
  return element;
}

/** A short-lived notice at the top of the page. */
export function notify(message, kind = "ok") {
  const area = document.getElementById("notices");
  if (!area) return;
  const notice = h("p", { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  area.appendChild(notice);
  setTimeout(() => notice.remove(), 6000);
}

/** Asks before something that changes what people see (archive); resolves true on yes. */
export function confirmAction(question, yes = "Archive") {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "confirm", "aria-label": question },
      h("p", {}, question),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", class: "danger", onclick: () => close(true) }, yes),
        h("button", { type: "button", onclick: () => close(false) }, "Cancel"),
      ),
    );
    function close(answer) {
      dialog.close();
      dialog.remove();
      resolve(answer);
    }
    dialog.addEventListener("cancel", () => close(false));
    document.body.appendChild(dialog);
    dialog.showModal();
  });
}

/** Copies text to the clipboard, also where the Clipboard API is not offered (plain http). */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (error) {
      // Falls through to the selection-based copy.
    }
  }
  const area = h("textarea", { class: "offscreen", readonly: true, "aria-hidden": "true" }, text);
  document.body.appendChild(area);
  area.select();
  const done = document.execCommand("copy");
  area.remove();
  return done;
}

export function copyButton(text, what) {
  return h(
    "button",
    {
      type: "button",
      class: "copy",
      "aria-label": `Copy ${what}`,
      onclick: async (event) => {
        const button = event.currentTarget;
        const done = await copyText(typeof text === "function" ? text() : text);
        button.textContent = done ? "Copied" : "Copy failed";
        setTimeout(() => {
          button.textContent = "Copy";
        }, 1500);
      },
    },
    "Copy",
  );
}

/** Offers text as a file download (error reports, exports read through the API). */
export function download(fileName, text, type = "text/csv") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = h("a", { href: url, download: fileName, class: "offscreen" });
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/**
 * A paged list: `fetchPage(path | null)` returns {items, next}; `render(items)` builds the
 * page. Previous/Next buttons walk the pages through the API's own page tokens.
 */
export function pager({ fetchPage, render, emptyMessage = "Nothing here yet.", what }) {
  const container = h("div", { class: "pager" });
  const history = [];
  let current = null;
  async function show(path) {
    await loadInto(
      container,
      () => fetchPage(path),
      (page) => {
        current = path;
        const items = page.items || [];
        if (!items.length && !history.length) return empty(emptyMessage);
        return h(
          "div",
          {},
          render(items),
          h(
            "nav",
            { class: "pages", "aria-label": "Pages" },
            h(
              "button",
              { type: "button", disabled: !history.length, onclick: () => show(history.pop()) },
              "Previous",
            ),
            h(
              "button",
              {
                type: "button",
                disabled: !page.next,
                onclick: () => {
                  history.push(current);
                  show(page.next);
                },
              },
              "Next",
            ),
          ),
        );
      },
      what,
    );
  }
  container.refresh = () => show(current);
  show(null);
  return container;
}

/** A table with a header row; `columns` are [label, (item) => cell content]. */
export function table(columns, items, { caption, rowProps } = {}) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, columns.map(([label]) => h("th", { scope: "col" }, label)))),
      h(
        "tbody",
        {},
        items.map((item) =>
          h("tr", rowProps ? rowProps(item) : {}, columns.map(([label, cell]) => h("td", { "data-label": label }, cell(item)))),
        ),
      ),
    ),
  );
}

/** A status word styled by what it means. */
export function badge(text) {
  return h("span", { class: `badge badge-${String(text).replace(/[^a-z_]/gi, "")}` }, String(text));
}

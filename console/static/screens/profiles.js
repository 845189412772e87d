// Profiles: one customer's values in one table (read, edit, erase), and one Optimizely user's
// consolidated view with the aliases that join it to customers of the other tables.

import { api, ApiError, request } from "../lib/api.js";
import { h, mount } from "../lib/dom.js";
import { confirmAction, empty, field, form, notify, table } from "../lib/ui.js";
import { datatypeText, loadService, loadTables } from "./attributes.js";
import {
  V1,
  button,
  crumbs,
  fieldProblem,
  heading,
  panel,
  runAction,
  serviceLink,
  statusLine,
  stillShown,
} from "./service.js";

export const routes = [{ path: "/services/:serviceId/profiles", title: "Profiles", render: renderProfiles }];

const API = "/api";
const segment = encodeURIComponent;

async function renderProfiles({ serviceId }, main) {
  const current = stillShown();
  const [service, tables] = await Promise.all([loadService(serviceId), loadTables(serviceId)]);
  if (!current()) return;
  const customer = customerPanel(service, tables);
  mount(
    main,
    crumbs(serviceLink(service)),
    heading("Profiles"),
    h("p", {}, "Look up what is stored about one customer of a table, change it or erase it; or see everything known about one Optimizely user, joined through its aliases."),
    customer.element,
    visitorPanel(service, tables, customer.lookup),
  );
}

function tableOptions(tables) {
  const text = (t) => (t.is_optimizely ? `${t.name} (customer id = Optimizely user id)` : t.name);
  return tables.map((t) => ({ value: t.id, label: text(t) }));
}

const moment = (epochMilliseconds) => new Date(epochMilliseconds).toISOString();

/** A stored value as people read it. */
function shown(attribute, value) {
  if (value === null || value === undefined) return "";
  if (attribute && attribute.format === "epoch" && typeof value === "number") return `${value} (${moment(value)})`;
  return String(value);
}

// One customer of one table

function customerPanel(service, tables) {
  const result = h("div", { class: "profile-result" });
  const active = tables.filter((t) => !t.archived);
  // The customers people look for are mostly in their own tables, not the built-in one.
  const ownFirst = active.find((t) => !t.is_optimizely) || active[0] || {};
  const lookupForm = form({
    label: "Look up a customer",
    submit: "Look up",
    fields: [
      field({ label: "Table", name: "table_id", type: "select", options: tableOptions(active), value: ownFirst.id }),
      field({ label: "Customer id", name: "customer_id", required: true, autocomplete: "off" }),
    ],
    async onSubmit(values) {
      const customerId = values.customer_id.trim();
      if (!customerId) throw fieldProblem("customer_id", "is required");
      await showCustomer(result, service, values.table_id, customerId);
    },
  });
  lookupForm.classList.add("form-inline");
  function lookup(tableId, customerId) {
    lookupForm.elements.table_id.value = String(tableId);
    lookupForm.elements.customer_id.value = customerId;
    lookupForm.requestSubmit();
    lookupForm.scrollIntoView();
  }
  const element = active.length
    ? panel("Customer profile", lookupForm, result)
    : panel("Customer profile", empty("This DCP service has no active table."));
  return { element, lookup };
}

function profilePath(service, item, customerId) {
  return `${API}/customer_profile/${service.id}/${item.id}/${segment(customerId)}`;
}

async function showCustomer(container, service, tableId, customerId) {
  const item = await api.get(`${V1}/dcp_datasources/${segment(tableId)}`);
  let profile = null;
  try {
    profile = await api.get(profilePath(service, item, customerId));
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) throw error;
  }
  const reload = () => showCustomer(container, service, tableId, customerId);
  mount(container, customerView(service, item, customerId, profile, reload));
}

function customerView(service, item, customerId, profile, reload) {
  const data = (profile && profile.data) || {};
  const byName = new Map(item.attributes.map((a) => [a.name, a]));
  const stored = Object.keys(data).sort();
  const active = item.attributes.filter((a) => !a.archived);
  return h(
    "div",
    { class: "customer" },
    h("h3", {}, `Customer “${customerId}” in “${item.name}”`),
    profile && stored.length
      ? table(
          [
            ["Attribute", (name) => h("span", { class: "mono" }, name)],
            ["Datatype", (name) => (byName.has(name) ? datatypeText(byName.get(name)) : "")],
            ["Value", (name) => shown(byName.get(name), data[name])],
          ],
          stored,
          { caption: "Stored values" },
        )
      : h(
          "p",
          { class: "state empty", role: "status" },
          `No profile for this customer: table “${item.name}” holds no values for “${customerId}”.`,
          active.length ? " Values entered below create one." : "",
        ),
    active.length
      ? editForm(service, item, customerId, data, reload)
      : h("p", { class: "hint" }, "The table has no active attribute to write; register attributes on the Attributes dashboard."),
    profile ? eraseButton(service, item, customerId, reload) : null,
  );
}

// Editing: one input per active attribute, fitting its datatype

const INPUTS = {
  long: { type: "number", step: 1, hint: "long: a whole number" },
  double: { type: "number", step: "any", hint: "double: a number" },
  string: { type: "text", hint: "string: text" },
  "yyyy-mm-dd": { type: "date", hint: "a date (yyyy-mm-dd)" },
  "yyyy-mm-ddThh:mm:ssZ": { type: "text", placeholder: "2024-01-31T17:30:00Z", hint: "a moment in UTC, as yyyy-mm-ddThh:mm:ssZ" },
  epoch: { type: "number", step: 1, hint: "milliseconds since 1970-01-01 UTC" },
};

const inputName = (attribute) => `value-${attribute.id}`;

/** The text an input shows for a stored value; comparing with it tells which inputs changed. */
function inputText(attribute, value) {
  return value === null || value === undefined ? "" : String(value);
}

function valueField(attribute, value) {
  const label = attribute.name;
  const name = inputName(attribute);
  if (attribute.datatype === "bool") {
    return field({
      label,
      name,
      type: "select",
      value: inputText(attribute, value),
      hint: "bool",
      options: [
        { value: "", label: "unset" },
        { value: "true", label: "true" },
        { value: "false", label: "false" },
      ],
    });
  }
  const kind = INPUTS[attribute.datatype === "datetime" ? attribute.format : attribute.datatype] || INPUTS.string;
  const { hint, ...input } = kind;
  const now = attribute.format === "epoch" && typeof value === "number" ? ` (now ${moment(value)})` : "";
  return field({ label, name, value: inputText(attribute, value), hint: hint + now, autocomplete: "off", ...input });
}

const WHOLE = /^-?\d+$/;

/** A value as JSON text; whole numbers keep all their digits (a long may exceed what a JS number holds). */
function encoded(attribute, text) {
  if (attribute.datatype === "long" || attribute.format === "epoch") {
    return WHOLE.test(text) ? text.replace(/^(-?)0+(?=\d)/, "$1") : JSON.stringify(Number(text));
  }
  if (attribute.datatype === "double") return JSON.stringify(Number(text));
  if (attribute.datatype === "bool") return text === "true" ? "true" : "false";
  return JSON.stringify(text);
}

/** The changed values as JSON members: an emptied input clears its value (null). */
function changes(formElement, attributes, data) {
  const members = [];
  const problems = [];
  for (const attribute of attributes) {
    const input = formElement.elements.namedItem(inputName(attribute));
    if (input.validity && input.validity.badInput) {
      problems.push({ field: `data.${attribute.name}`, message: "is not a number" });
      continue;
    }
    const text = attribute.datatype === "string" ? input.value : input.value.trim();
    if (text === inputText(attribute, data[attribute.name])) continue;
    const value = text === "" ? "null" : encoded(attribute, text);
    members.push(`${JSON.stringify(attribute.name)}:${value}`);
  }
  if (problems.length) throw new ApiError(400, { message: "Some values are not valid.", errors: problems });
  return members;
}

function editForm(service, item, customerId, data, reload) {
  const active = item.attributes.filter((a) => !a.archived);
  return h(
    "div",
    { class: "edit-values" },
    h("h4", {}, "Edit values"),
    h("p", { class: "hint" }, "Only the values you change are sent; empty an input to clear its value."),
    form({
      label: `Values of ${customerId}`,
      submit: "Save values",
      // The profiles service names a value by its place in the body: data.<attribute name>.
      aliases: Object.fromEntries(active.map((a) => [`data.${a.name}`, inputName(a)])),
      fields: h("div", { class: "value-grid" }, active.map((a) => valueField(a, data[a.name]))),
      async onSubmit(values, formElement) {
        const members = changes(formElement, active, data);
        if (!members.length) throw new Error("Nothing to save: no value was changed.");
        await request("POST", profilePath(service, item, customerId), {
          body: `{"data":{${members.join(",")}}}`,
          headers: { "Content-Type": "application/json" },
        });
        notify(`Saved ${members.length} value${members.length === 1 ? "" : "s"} of “${customerId}”.`);
        await reload();
      },
    }),
  );
}

function eraseButton(service, item, customerId, reload) {
  const line = statusLine();
  const erase = () =>
    runAction(line, async () => {
      const question = `Delete every value of customer “${customerId}” in table “${item.name}”? This cannot be undone.`;
      if (!(await confirmAction(question, "Delete"))) return;
      await api.del(profilePath(service, item, customerId));
      notify(`The values of “${customerId}” were deleted.`);
      await reload();
    });
  return h("div", { class: "erase" }, line, button("Delete this customer's values", erase, { kind: "danger" }));
}

// One Optimizely user

function visitorPanel(service, tables, lookupCustomer) {
  const optimizely = tables.find((t) => t.is_optimizely);
  if (!optimizely) return panel("Optimizely user", empty("This DCP service has no Optimizely table."));
  const result = h("div", { class: "visitor-result" });
  const show = form({
    label: "Show an Optimizely user",
    submit: "Show user",
    fields: [
      field({
        label: "Optimizely user id",
        name: "user_id",
        required: true,
        autocomplete: "off",
        hint: "As in the visitor's optimizelyEndUserId cookie, e.g. oeu1457385393173r0.65.",
      }),
    ],
    async onSubmit(values) {
      const userId = values.user_id.trim();
      if (!userId) throw fieldProblem("user_id", "is required");
      await showVisitor(result, { service, tables, optimizely, userId, lookupCustomer });
    },
  });
  show.classList.add("form-inline");
  return panel("Optimizely user", show, result);
}

async function showVisitor(container, context) {
  const { service, optimizely, userId } = context;
  const [view, aliases] = await Promise.all([
    api.get(`${API}/consolidatedCustomerView/${service.id}/${segment(userId)}`),
    api.get(`${API}/alias/${service.id}/${optimizely.id}/${segment(userId)}`),
  ]);
  const reload = () => showVisitor(container, context);
  mount(
    container,
    h("h3", {}, `Optimizely user “${userId}”`),
    aliasesSection(context, aliases.data || {}, reload),
    consolidatedSection(context, view),
  );
}

function aliasesSection(context, links, reload) {
  const { service, tables, optimizely, userId, lookupCustomer } = context;
  const names = new Map(tables.map((t) => [String(t.id), t.name]));
  const line = statusLine();
  const rows = Object.entries(links).map(([tableId, customerId]) => ({
    tableId,
    customerId,
    name: names.get(tableId) || `table ${tableId}`,
  }));
  const open = (row) => lookupCustomer(row.tableId, row.customerId);
  const remove = (row) =>
    runAction(line, async () => {
      const question = `Remove the alias between “${userId}” and customer “${row.customerId}” of “${row.name}”?`;
      if (!(await confirmAction(question, "Remove"))) return;
      await api.del(`${API}/alias/${service.id}/${optimizely.id}/${segment(userId)}/${row.tableId}`);
      notify(`Alias to “${row.name}” removed.`);
      await reload();
    });
  const linkable = tables.filter((t) => !t.archived && !t.is_optimizely);
  return h(
    "section",
    { class: "aliases", "aria-label": "Aliases" },
    h("h4", {}, "Aliases"),
    line,
    rows.length
      ? table(
          [
            ["Table", (row) => row.name],
            ["Customer id", (row) => button(row.customerId, () => open(row), { kind: "link" })],
            ["", (row) => button("Remove", () => remove(row), { label: `Remove alias to ${row.name}` })],
          ],
          rows,
          { caption: "Customer ids linked to this user" },
        )
      : h("p", { class: "hint" }, "This user is not linked to a customer of another table yet."),
    linkable.length ? aliasForm(context, linkable, reload) : null,
  );
}

function aliasForm(context, linkable, reload) {
  const { service, optimizely, userId } = context;
  const add = form({
    label: "Add an alias",
    submit: "Add alias",
    // The aliases service names a link by its table id: data.<table id>.
    aliases: Object.fromEntries(linkable.map((t) => [`data.${t.id}`, "alias_customer_id"])),
    fields: [
      field({ label: "Table of the customer", name: "alias_table_id", type: "select", options: tableOptions(linkable) }),
      field({ label: "Customer id in that table", name: "alias_customer_id", required: true, autocomplete: "off" }),
    ],
    async onSubmit(values) {
      const customerId = values.alias_customer_id.trim();
      if (!customerId) throw fieldProblem("alias_customer_id", "is required");
      const link = { data: { [values.alias_table_id]: customerId } };
      await api.post(`${API}/alias/${service.id}/${optimizely.id}/${segment(userId)}`, link);
      notify(`“${userId}” linked to customer “${customerId}”.`);
      await reload();
    },
  });
  add.classList.add("form-inline");
  return add;
}

function consolidatedSection(context, view) {
  const { tables } = context;
  const byId = new Map(tables.map((t) => [String(t.id), t]));
  return h(
    "section",
    { class: "consolidated", "aria-label": "Consolidated profile" },
    h("h4", {}, "Consolidated profile"),
    view.length
      ? view.map((profile) => {
          const item = byId.get(String(profile.datasourceId));
          const attributes = new Map(((item && item.attributes) || []).map((a) => [a.name, a]));
          const names = Object.keys(profile.data).sort();
          const title = item ? item.name : `table ${profile.datasourceId}`;
          return h(
            "div",
            { class: "consolidated-table" },
            h("h5", {}, `${title} · customer “${profile.customerId}”`),
            table(
              [
                ["Attribute", (name) => h("span", { class: "mono" }, name)],
                ["Value", (name) => shown(attributes.get(name), profile.data[name])],
              ],
              names,
              { caption: `Values from ${title}` },
            ),
          );
        })
      : h("p", { class: "state empty" }, "Nothing is known about this user yet: add an alias to a customer who has values, or write values to the Optimizely table."),
  );
}

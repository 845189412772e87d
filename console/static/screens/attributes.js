// The Attributes dashboard: a DCP service's tables (the built-in Optimizely table first) with
// their attributes, and one table's page where the table and its attributes are managed.

import { api } from "../lib/api.js";
import { h } from "../lib/dom.js";
import { badge, confirmAction, copyButton, empty, field, form, notify, table } from "../lib/ui.js";
import {
  V1,
  button,
  crumbs,
  fieldProblem,
  heading,
  liveScreen,
  panel,
  runAction,
  serviceLink,
  statusLine,
} from "./service.js";

export const routes = [
  { path: "/services/:serviceId/tables", title: "Attributes", render: renderDashboard },
  { path: "/services/:serviceId/tables/:tableId", title: "Table", render: renderTable },
];

export const LOCATORS = [
  { value: "cookie", label: "A cookie", name: "Cookie name", word: "cookie" },
  { value: "query parameter", label: "A query parameter of the page's URL", name: "Query parameter name", word: "query parameter" },
  { value: "js_variable", label: "A JavaScript variable", name: "JavaScript variable name", word: "JavaScript variable" },
  { value: "uid", label: "The Optimizely user id (uid)", name: null },
];

export const IMPORT_MODES = [
  { value: "partial", label: "Partial: store the valid rows and report the bad ones" },
  { value: "all_or_nothing", label: "All or nothing: a file with any bad row stores nothing" },
];

const IMPORT_MODE_HINT =
  "What happens to an uploaded file that has bad rows: with partial, its good rows are stored and the bad ones " +
  "listed in the upload's error report; with all or nothing, the file stores nothing until it is fixed.";

export const DATATYPES = [
  { value: "string", label: "string: text" },
  { value: "bool", label: "bool: true or false" },
  { value: "long", label: "long: a whole number" },
  { value: "double", label: "double: a decimal number" },
  { value: "datetime", label: "datetime: a date or a moment" },
];

export const FORMATS = [
  { value: "yyyy-mm-dd", label: "yyyy-mm-dd: a date, e.g. 2024-01-31" },
  { value: "yyyy-mm-ddThh:mm:ssZ", label: "yyyy-mm-ddThh:mm:ssZ: a moment in UTC, e.g. 2024-01-31T17:30:00Z" },
  { value: "epoch", label: "epoch: milliseconds since 1970-01-01 UTC" },
];

/** The built-in Optimizely table first, then the others in the order they were made. */
export function tablesInOrder(tables) {
  return [...tables].sort((a, b) => Number(b.is_optimizely) - Number(a.is_optimizely) || a.id - b.id);
}

export function loadService(serviceId) {
  return api.get(`${V1}/dcp_services/${encodeURIComponent(serviceId)}`);
}

export function loadTables(serviceId) {
  return api.get(`${V1}/dcp_services/${encodeURIComponent(serviceId)}/dcp_datasources`).then(tablesInOrder);
}

/** Where a visitor's page holds the table's customer id, in words. */
export function locatorText(item) {
  const locator = LOCATORS.find((l) => l.value === item.keyfield_locator_type);
  if (!locator || !locator.name) return "the Optimizely user id (uid)";
  return `${locator.word} “${item.keyfield_locator_name}”`;
}

export function datatypeText(attribute) {
  return attribute.datatype === "datetime" ? `datetime (${attribute.format})` : attribute.datatype;
}

const importModeText = (item) => (item.import_mode === "all_or_nothing" ? "all or nothing" : "partial");
const tableBadges = (item) => [item.is_optimizely ? badge("built-in") : null, item.archived ? badge("archived") : null];
const tablePath = (serviceId, tableId) => `#/services/${serviceId}/tables/${tableId}`;
const uploadPath = (serviceId, tableId) => `${tablePath(serviceId, tableId)}/upload`;

/** Opens or closes a part of the screen kept in `state`, then draws the screen again. */
function change(state, changes, refresh) {
  Object.assign(state, changes);
  return refresh();
}

// The dashboard

async function renderDashboard({ serviceId }, main, ctx) {
  const screen = liveScreen(
    main,
    () => Promise.all([loadService(serviceId), loadTables(serviceId)]),
    ([service, tables], refresh) => dashboard(service, tables, ctx, refresh),
  );
  await screen.refresh();
  return screen.stop;
}

function dashboard(service, tables, ctx, refresh) {
  const active = tables.filter((t) => !t.archived);
  const archived = tables.filter((t) => t.archived);
  const ownTables = active.filter((t) => !t.is_optimizely);
  const create = tableForm({ submit: "Create table", onSubmit: (body) => createTable(service, body, ctx) });
  return [
    crumbs(serviceLink(service)),
    heading("Attributes", service.archived ? badge("archived") : null),
    h("p", {}, `The tables of “${service.name}” and the attributes registered on each.`),
    ownTables.length || service.archived ? null : firstSteps(),
    active.map((item) => tableCard(service, item)),
    service.archived ? null : panel("Create a table", create),
    archived.length ? archivedTables(service, archived, refresh) : null,
  ];
}

function firstSteps() {
  const step = (title, text) => h("li", {}, h("strong", {}, title), text);
  return h(
    "section",
    { class: "state empty first-steps", "aria-labelledby": "first-steps" },
    h("h2", { id: "first-steps" }, "Start here"),
    h("p", {}, "Only the built-in Optimizely table is here so far. To bring your customer data in:"),
    h(
      "ol",
      {},
      step("Create a table", " below for the customer ids of one of your systems (your CRM, say), and say where a visitor's page holds that id."),
      step("Register its attributes", " on the table's page: the name and datatype of each value you will send."),
      step("Upload data", " from the table's Data Upload screen (a CSV file), or write profiles through the API."),
    ),
  );
}

function tableCard(service, item) {
  const titleId = `table-${item.id}-title`;
  const attributes = item.attributes.filter((a) => !a.archived);
  const archivedCount = item.attributes.length - attributes.length;
  return h(
    "section",
    { class: "panel table-card", "aria-labelledby": titleId },
    h("h2", { id: titleId }, h("a", { href: tablePath(service.id, item.id) }, item.name), " ", tableBadges(item)),
    item.description ? h("p", { class: "hint" }, item.description) : null,
    h("p", { class: "meta" }, `Customer id: ${locatorText(item)} · Import mode: ${importModeText(item)} · Table id ${item.id}`),
    attributes.length
      ? attributesTable(attributes, `Attributes of ${item.name}`)
      : h("p", { class: "hint" }, "No attributes yet: register them on the table's page."),
    archivedCount ? h("p", { class: "hint" }, `Archived attributes: ${archivedCount}.`) : null,
    h(
      "p",
      { class: "row-actions" },
      h("a", { class: "button", href: tablePath(service.id, item.id) }, "Table and attributes"),
      h("a", { class: "button", href: uploadPath(service.id, item.id) }, "Data Upload"),
    ),
  );
}

function attributesTable(attributes, caption, actions) {
  const columns = [
    ["Name", (a) => h("span", { class: "mono" }, a.name)],
    ["Datatype", datatypeText],
    ["Description", (a) => a.description || ""],
    ["Content-enabled", (a) => (a.is_value_public ? "yes" : "no")],
  ];
  if (actions) columns.push(["", actions]);
  return table(columns, attributes, { caption, rowProps: (a) => ({ class: a.archived ? "archived" : null }) });
}

function archivedTables(service, tables, refresh) {
  const line = statusLine();
  const unarchive = (item) => runAction(line, () => setTableArchived(item, false, refresh));
  const action = (item) =>
    service.archived ? "" : button("Unarchive", () => unarchive(item), { label: `Unarchive ${item.name}` });
  return panel(
    "Archived tables",
    h("p", { class: "hint" }, "They take no uploads or writes until unarchived."),
    line,
    table(
      [
        ["Name", (t) => h("a", { href: tablePath(service.id, t.id) }, t.name)],
        ["Customer id", locatorText],
        ["Attributes", (t) => String(t.attributes.length)],
        ["", action],
      ],
      tables,
      { rowProps: () => ({ class: "archived" }) },
    ),
  );
}

async function createTable(service, body, ctx) {
  const created = await api.post(`${V1}/dcp_services/${service.id}/dcp_datasources`, body);
  notify(`Table “${created.name}” created. Now register its attributes.`);
  ctx.navigate(`/services/${service.id}/tables/${created.id}`);
}

// The table form, for creating one and for editing one

/** Asks for the locator's name only for the locator types that have one, labelled for the type. */
function locatorFields(current) {
  const type = field({
    label: "Where a visitor's page holds the customer id",
    name: "keyfield_locator_type",
    type: "select",
    value: current.keyfield_locator_type || "cookie",
    options: LOCATORS,
    hint: "So that a visitor can be linked to this table's customer id.",
  });
  const name = field({ label: "", name: "keyfield_locator_name", value: current.keyfield_locator_name || "" });
  const select = type.querySelector("select");
  const input = name.querySelector("input");
  function sync() {
    const locator = LOCATORS.find((item) => item.value === select.value);
    name.hidden = !locator.name;
    input.disabled = !locator.name;
    input.required = Boolean(locator.name);
    const star = h("span", { class: "required", "aria-hidden": "true" }, " *");
    name.querySelector("label").replaceChildren(...(locator.name ? [locator.name, star] : []));
  }
  select.addEventListener("change", sync);
  sync();
  return [type, name];
}

function tableForm({ current = {}, submit, onSubmit, onCancel }) {
  const builtIn = Boolean(current.is_optimizely);
  return form({
    label: submit,
    submit,
    onCancel,
    fields: [
      field({ label: "Table name", name: "name", value: current.name, required: true, "data-autofocus": Boolean(current.id) }),
      field({ label: "Description", name: "description", type: "textarea", value: current.description || "" }),
      builtIn
        ? h("p", { class: "hint" }, "The built-in Optimizely table's customer id is always the Optimizely user id (uid).")
        : locatorFields(current),
      field({
        label: "Import mode",
        name: "import_mode",
        type: "select",
        value: current.import_mode || "partial",
        options: IMPORT_MODES,
        hint: IMPORT_MODE_HINT,
      }),
    ],
    async onSubmit(values) {
      if (!values.name.trim()) throw fieldProblem("name", "is required");
      const body = {
        name: values.name.trim(),
        description: values.description.trim() || null,
        import_mode: values.import_mode,
      };
      if (!builtIn) {
        const type = values.keyfield_locator_type;
        body.keyfield_locator_type = type;
        body.keyfield_locator_name = type === "uid" ? null : values.keyfield_locator_name.trim();
      }
      await onSubmit(body);
    },
  });
}

// One table's page

async function renderTable({ serviceId, tableId }, main) {
  const state = { editing: null, editingTable: false, added: false };
  const screen = liveScreen(
    main,
    () => Promise.all([loadService(serviceId), api.get(`${V1}/dcp_datasources/${encodeURIComponent(tableId)}`)]),
    ([service, item], refresh) => tableScreen(service, item, state, refresh),
  );
  await screen.refresh();
  return screen.stop;
}

function tableScreen(service, item, state, refresh) {
  const frozen = service.archived || item.archived;
  return [
    crumbs(serviceLink(service), [`#/services/${service.id}/tables`, "Attributes"]),
    heading(item.name, ...tableBadges(item)),
    item.description ? h("p", {}, item.description) : null,
    item.archived
      ? h(
          "p",
          { class: "state empty", role: "status" },
          "This table is archived: it takes no uploads or writes, and its attributes cannot change until it is unarchived.",
        )
      : null,
    tableActions(service, item, refresh),
    tableSettings(item, state, frozen, refresh),
    attributesPanel(item, state, frozen, refresh),
    frozen ? null : panel("Add an attribute", attributeForm(item, state, refresh)),
  ];
}

function tableActions(service, item, refresh) {
  const line = statusLine();
  const archive = (archived) => () => runAction(line, () => setTableArchived(item, archived, refresh));
  let action = null;
  if (item.archived && !service.archived) action = button("Unarchive table", archive(false));
  else if (!item.archived && !item.is_optimizely) action = button("Archive table", archive(true), { kind: "danger" });
  const upload = h("a", { class: "button primary", href: uploadPath(service.id, item.id) }, "Data Upload");
  return h("div", {}, h("div", { class: "toolbar" }, upload, h("span", { class: "grow" }), action), line);
}

async function setTableArchived(item, archived, refresh) {
  if (archived) {
    const question = `Archive the table “${item.name}”? It stops taking uploads and writes; it can be unarchived later.`;
    if (!(await confirmAction(question, "Archive"))) return;
    await api.del(`${V1}/dcp_datasources/${item.id}`);
  } else {
    await api.put(`${V1}/dcp_datasources/${item.id}`, { archived: false });
  }
  notify(`Table “${item.name}” ${archived ? "archived" : "unarchived"}.`);
  await refresh();
}

function tableSettings(item, state, frozen, refresh) {
  const summary = h(
    "dl",
    { class: "kv" },
    h("dt", {}, "Table id"),
    h("dd", {}, String(item.id)),
    h("dt", {}, "Customer id"),
    h("dd", {}, locatorText(item)),
    h("dt", {}, "Import mode"),
    h("dd", {}, importModeText(item)),
    h("dt", {}, "S3 path"),
    h("dd", {}, h("code", {}, item.s3_path), copyButton(item.s3_path, "S3 path")),
  );
  if (frozen) return panel("Table settings", summary);
  if (!state.editingTable) {
    return panel("Table settings", summary, h("p", {}, button("Edit table", () => change(state, { editingTable: true }, refresh))));
  }
  const edit = tableForm({
    current: item,
    submit: "Save table",
    onCancel: () => change(state, { editingTable: false }, refresh),
    async onSubmit(body) {
      await api.put(`${V1}/dcp_datasources/${item.id}`, body);
      notify("Table saved.");
      await change(state, { editingTable: false }, refresh);
    },
  });
  return panel("Table settings", edit);
}

// Attributes

function attributesPanel(item, state, frozen, refresh) {
  const active = item.attributes.filter((a) => !a.archived);
  const archived = item.attributes.filter((a) => a.archived);
  const line = statusLine();
  const act = (work) => () => runAction(line, work);
  const activeActions = (a) =>
    h(
      "span",
      { class: "row-actions" },
      button("Edit", () => change(state, { editing: a.id }, refresh), { label: `Edit ${a.name}` }),
      button("Archive", act(() => archiveAttribute(a, refresh)), { label: `Archive ${a.name}`, kind: "danger" }),
    );
  const archivedActions = (a) => button("Unarchive", act(() => unarchiveAttribute(a, refresh)), { label: `Unarchive ${a.name}` });
  const editing = frozen ? null : active.find((a) => a.id === state.editing);
  const none = frozen
    ? "No active attributes."
    : "No attributes yet. Add the first one below: each value you send or upload must belong to one.";
  return panel(
    "Attributes",
    line,
    active.length ? attributesTable(active, `Attributes of ${item.name}`, frozen ? null : activeActions) : empty(none),
    editing ? attributeEditForm(editing, state, refresh) : null,
    archived.length
      ? [
          h("h3", {}, "Archived attributes"),
          h(
            "div",
            { class: "archived-list" },
            attributesTable(archived, `Archived attributes of ${item.name}`, frozen ? null : archivedActions),
          ),
        ]
      : null,
  );
}

async function archiveAttribute(attribute, refresh) {
  const question = `Archive the attribute “${attribute.name}”? It can no longer be written or uploaded; it can be unarchived later.`;
  if (!(await confirmAction(question, "Archive"))) return;
  await api.del(`${V1}/dcp_datasource_attributes/${attribute.id}`);
  notify(`Attribute “${attribute.name}” archived.`);
  await refresh();
}

async function unarchiveAttribute(attribute, refresh) {
  await api.put(`${V1}/dcp_datasource_attributes/${attribute.id}`, { archived: false });
  notify(`Attribute “${attribute.name}” unarchived.`);
  await refresh();
}

function publicField(value) {
  return field({
    label: "Content-enabled: its values may be read in the visitor's browser",
    name: "is_value_public",
    type: "checkbox",
    value,
  });
}

function attributeEditForm(attribute, state, refresh) {
  const close = () => change(state, { editing: null }, refresh);
  const description = field({
    label: "Description",
    name: "description",
    type: "textarea",
    value: attribute.description || "",
    "data-autofocus": true,
  });
  return h(
    "div",
    { class: "edit-attribute" },
    h("h3", {}, `Edit “${attribute.name}” (${datatypeText(attribute)})`),
    h("p", { class: "hint" }, "An attribute's name and datatype never change; archive it and add another to change them."),
    form({
      label: `Edit ${attribute.name}`,
      submit: "Save attribute",
      onCancel: close,
      fields: [description, publicField(attribute.is_value_public)],
      async onSubmit(values) {
        await api.put(`${V1}/dcp_datasource_attributes/${attribute.id}`, {
          description: values.description.trim() || null,
          is_value_public: values.is_value_public,
        });
        notify(`Attribute “${attribute.name}” saved.`);
        await close();
      },
    }),
  );
}

/** The datatype select, and the format select shown only for datetime. */
function datatypeFields() {
  const datatype = field({ label: "Datatype", name: "datatype", type: "select", options: DATATYPES, value: "string" });
  const format = field({
    label: "Datetime format",
    name: "format",
    type: "select",
    options: FORMATS,
    hint: "Every value must be written in exactly this format.",
  });
  const select = datatype.querySelector("select");
  function sync() {
    const isDatetime = select.value === "datetime";
    format.hidden = !isDatetime;
    format.querySelector("select").disabled = !isDatetime;
  }
  select.addEventListener("change", sync);
  sync();
  return [datatype, format];
}

function attributeForm(item, state, refresh) {
  // After an attribute is added, the next one can be typed at once.
  const again = state.added;
  state.added = false;
  return form({
    label: "Add an attribute",
    submit: "Add attribute",
    fields: [
      field({
        label: "Attribute name",
        name: "name",
        required: true,
        "data-autofocus": again,
        hint: "As in your files' header row; case matters. Unique among the table's active attributes.",
      }),
      datatypeFields(),
      field({ label: "Description", name: "description", type: "textarea" }),
      publicField(false),
    ],
    async onSubmit(values) {
      if (!values.name.trim()) throw fieldProblem("name", "is required");
      const body = {
        name: values.name.trim(),
        datatype: values.datatype,
        description: values.description.trim() || null,
        is_value_public: values.is_value_public,
      };
      if (values.datatype === "datetime") body.format = values.format;
      const created = await api.post(`${V1}/dcp_datasources/${item.id}/dcp_datasource_attributes`, body);
      notify(`Attribute “${created.name}” added.`);
      await change(state, { added: true }, refresh);
    },
  });
}

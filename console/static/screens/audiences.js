// Audiences: the projects linked to a DCP service and their audiences, and the builder of one
// audience's conditions with its live member count, a one-visitor check and its members.

import { api, ApiError, request } from "../lib/api.js";
import { count, h, mount, when } from "../lib/dom.js";
import { badge, confirmAction, describe, empty, field, form, loadInto, notify, pager, table } from "../lib/ui.js";

const V1 = "/experiment/v1";
const COUNT_DELAY_MS = 400;

/** The projects linked to this DCP service (the API lists all of the account's). */
export async function linkedProjects(serviceId) {
  const projects = await api.get(`${V1}/projects`);
  return projects.filter((project) => String(project.dcp_service_id) === String(serviceId));
}

export function serviceTables(serviceId) {
  return api.get(`${V1}/dcp_services/${serviceId}/dcp_datasources`);
}

function servicePath(serviceId, rest = "") {
  return `#/services/${serviceId}${rest}`;
}

// ---------------------------------------------------------------------------------------------
// The audiences of the linked projects

function projectForm(serviceId, ctx, label) {
  return form({
    label,
    submit: "Create project",
    fields: [field({ label: "Project name", name: "project_name", required: true })],
    async onSubmit(values) {
      await api.post(`${V1}/projects`, { project_name: values.project_name.trim(), dcp_service_id: Number(serviceId) });
      notify(`Project “${values.project_name.trim()}” created`);
      ctx.navigate(`/services/${serviceId}/audiences`);
    },
  });
}

function audienceTable(serviceId, audiences) {
  // Active audiences first: the archived ones stay listed, greyed, for reference.
  const ordered = [...audiences].sort((a, b) => Number(a.archived) - Number(b.archived));
  return table(
    [
      ["Audience", (a) => h("a", { href: servicePath(serviceId, `/audiences/${a.id}`) }, a.name)],
      ["Description", (a) => a.description || ""],
      ["Status", (a) => badge(a.archived ? "archived" : "active")],
      ["Last changed", (a) => when(a.last_modified)],
    ],
    ordered,
    { rowProps: (a) => ({ class: a.archived ? "archived" : null }) },
  );
}

function projectPanel(serviceId, project) {
  const list = h("div", {});
  loadInto(
    list,
    () => api.get(`${V1}/projects/${project.id}/audiences`),
    (audiences) =>
      audiences.length
        ? audienceTable(serviceId, audiences)
        : empty("No audiences in this project yet: create the first with “New audience”."),
    "Loading the audiences",
  );
  return h(
    "section",
    { class: "panel", "aria-label": `Project ${project.project_name}` },
    h(
      "div",
      { class: "toolbar panel-head" },
      h("h2", { class: "grow" }, project.project_name, " ", h("span", { class: "hint" }, `project ${project.id}`)),
      h(
        "a",
        { class: "button primary", href: servicePath(serviceId, `/projects/${project.id}/audiences/new`) },
        "New audience",
        h("span", { class: "offscreen" }, ` in ${project.project_name}`),
      ),
    ),
    list,
  );
}

async function renderAudiences({ serviceId }, main, ctx) {
  const projects = await linkedProjects(serviceId);
  const intro = h(
    "p",
    { class: "hint" },
    "An audience is a set of conditions over the attributes of this DCP service; it belongs to a project linked to the service.",
  );
  if (!projects.length) {
    mount(
      main,
      h("h1", {}, "Audiences"),
      intro,
      empty("No project is linked to this DCP service yet. Create a project linked to it first; its audiences can then use the service's attributes."),
      h("section", { class: "panel" }, h("h2", {}, "Create a project"), projectForm(serviceId, ctx, "Create a project")),
    );
    return;
  }
  mount(
    main,
    h("h1", {}, "Audiences"),
    intro,
    projects.map((project) => projectPanel(serviceId, project)),
    h(
      "details",
      { class: "panel" },
      h("summary", {}, "Create another project linked to this service"),
      projectForm(serviceId, ctx, "Create another project"),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// The condition grammar as the API takes it: ["and" | "or" | "not", operand, ...], leaves
// {type: "dcp", dcp_datasource_id, dcp_attribute_id, match_type, value}.

const ORDERED = ["exists", "exact", "in", "gt", "ge", "lt", "le", "between"];
const MATCH_TYPES = {
  string: ["exists", "exact", "substring", "in"],
  bool: ["exists", "exact"],
  long: ORDERED,
  double: ORDERED,
  datetime: [...ORDERED, "before", "after", "within_last"],
};
const MATCH_LABELS = {
  exists: "has a value",
  exact: "equals",
  substring: "contains",
  in: "is one of",
  gt: "greater than",
  ge: "at least",
  lt: "less than",
  le: "at most",
  between: "between",
  before: "before",
  after: "after",
  within_last: "within the last days",
};
const OPERATORS = [
  { value: "and", label: "all of these (and)" },
  { value: "or", label: "any of these (or)" },
  { value: "not", label: "not (takes one condition)" },
];

let nodeKeys = 0;

function newLeaf(fields = {}) {
  nodeKeys += 1;
  return { kind: "leaf", key: nodeKeys, tableId: "", attributeId: "", matchType: "", value: "", values: [""], low: "", high: "", ...fields };
}

function newGroup(op = "and", children = []) {
  nodeKeys += 1;
  return { kind: "group", key: nodeKeys, op, children };
}

/** What an input of this attribute looks like: the datatype's kind of value, and its format. */
function inputKind(attribute) {
  if (!attribute) return { type: "text" };
  switch (attribute.datatype) {
    case "long":
      return { type: "number", step: "1", inputmode: "numeric" };
    case "double":
      return { type: "number", step: "any", inputmode: "decimal" };
    case "bool":
      return { type: "bool" };
    case "datetime":
      if (attribute.format === "yyyy-mm-dd") return { type: "date" };
      return { type: "datetime-local", step: "1", utc: true };
    default:
      return { type: "text" };
  }
}

// A number input's value is an HTML floating-point number; JSON wants no leading zeros. Sent as
// written (not through a JS number) so 64-bit integers arrive exactly.
function numberJson(text) {
  const found = /^(-?)(\d+)(\.\d+)?([eE][+-]?\d+)?$/.exec(text.trim());
  if (!found) return JSON.stringify(text);
  return `${found[1]}${found[2].replace(/^0+(?=\d)/, "")}${found[3] || ""}${found[4] || ""}`;
}

/** "YYYY-MM-DDTHH:MM[:SS[.sss]]" read as UTC. */
function utcParts(text) {
  const found = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})(:\d{2})?(\.\d+)?$/.exec(text);
  return found && { seconds: `${found[1]}T${found[2]}${found[3] || ":00"}`, fraction: found[4] || "" };
}

/** The JSON text of one value typed into the editor, in the form the attribute's datatype takes. */
function valueJson(attribute, text) {
  if (!attribute) return JSON.stringify(text);
  const kind = inputKind(attribute);
  if (attribute.datatype === "long" || attribute.datatype === "double") return numberJson(text);
  if (kind.type === "bool") return text === "true" ? "true" : "false";
  if (attribute.datatype === "datetime" && attribute.format !== "yyyy-mm-dd") {
    const parts = utcParts(text);
    if (!parts) return JSON.stringify(text);
    if (attribute.format === "epoch") return String(Date.parse(`${parts.seconds}${parts.fraction}Z`));
    return JSON.stringify(`${parts.seconds}Z`);
  }
  return JSON.stringify(text);
}

/** A stored value back as the text its input shows. */
function valueText(attribute, value) {
  const number = numberSource(value);
  if (number !== null && attribute && attribute.datatype === "datetime" && attribute.format === "epoch") {
    const date = new Date(Number(number));
    if (Number.isNaN(date.getTime())) return number;
    const iso = date.toISOString();
    return date.getUTCMilliseconds() ? iso.slice(0, 23) : iso.slice(0, 19);
  }
  if (number !== null) return number;
  if (typeof value === "string" && attribute && attribute.datatype === "datetime") return value.replace(/Z$/, "");
  return value === null || value === undefined ? "" : String(value);
}

// Saved conditions are parsed keeping each number's source text (a 64-bit long does not fit a
// JS number); where the browser cannot give it, the number itself is used.
function parseConditionsText(text) {
  return JSON.parse(text || "[]", (key, value, context) =>
    typeof value === "number" && context && typeof context.source === "string" ? { number: context.source } : value,
  );
}

function numberSource(value) {
  if (value && typeof value === "object" && typeof value.number === "string") return value.number;
  return typeof value === "number" ? String(value) : null;
}

function treeFromJson(document, attributes) {
  if (!Array.isArray(document) || !document.length) return newGroup("and");
  const [op, ...operands] = document;
  return newGroup(
    op,
    operands.map((operand) => (Array.isArray(operand) ? treeFromJson(operand, attributes) : leafFromJson(operand, attributes))),
  );
}

function leafFromJson(leaf, attributes) {
  const tableId = numberSource(leaf.dcp_datasource_id) || "";
  const attributeId = numberSource(leaf.dcp_attribute_id) || "";
  const attribute = attributes.get(`${tableId}/${attributeId}`);
  const fields = { tableId, attributeId, matchType: leaf.match_type || "" };
  if (leaf.name !== undefined) fields.name = leaf.name;
  if (!attribute || attribute.archived || attribute.tableArchived) fields.kept = leaf.value;
  const value = leaf.value;
  if (fields.matchType === "in" && Array.isArray(value)) fields.values = value.map((v) => valueText(attribute, v));
  else if (fields.matchType === "between" && Array.isArray(value)) {
    fields.low = valueText(attribute, value[0]);
    fields.high = valueText(attribute, value[1]);
  } else if (fields.matchType === "within_last") fields.value = numberSource(value) || "";
  else if (fields.matchType !== "exists") fields.value = valueText(attribute, value);
  return newLeaf(fields);
}

/** A value kept as loaded (its attribute is gone), numbers as their own source text. */
function keptJson(value) {
  const number = numberSource(value);
  if (number !== null) return number;
  if (Array.isArray(value)) return `[${value.map(keptJson).join(",")}]`;
  return JSON.stringify(value);
}

/** The whole tree as the API's JSON text; call only on a tree without gaps. */
function treeJson(node, attributes) {
  if (node.kind === "group") {
    return `[${[JSON.stringify(node.op), ...node.children.map((child) => treeJson(child, attributes))].join(",")}]`;
  }
  const attribute = attributes.get(`${node.tableId}/${node.attributeId}`);
  const parts = [
    `"type":"dcp"`,
    `"dcp_datasource_id":${numberJson(node.tableId)}`,
    `"dcp_attribute_id":${numberJson(node.attributeId)}`,
    `"match_type":${JSON.stringify(node.matchType)}`,
  ];
  if (node.name !== undefined) parts.push(`"name":${JSON.stringify(node.name)}`);
  if (node.kept !== undefined) {
    if (node.matchType !== "exists") parts.push(`"value":${keptJson(node.kept)}`);
  } else if (node.matchType === "in") {
    parts.push(`"value":[${node.values.map((text) => valueJson(attribute, text)).join(",")}]`);
  } else if (node.matchType === "between") {
    parts.push(`"value":[${valueJson(attribute, node.low)},${valueJson(attribute, node.high)}]`);
  } else if (node.matchType === "within_last") {
    parts.push(`"value":${numberJson(node.value)}`);
  } else if (node.matchType !== "exists") {
    parts.push(`"value":${valueJson(attribute, node.value)}`);
  }
  return `{${parts.join(",")}}`;
}

/** Why a condition cannot be sent yet, or null; the API checks the rest. */
function leafGap(leaf) {
  if (leaf.kept !== undefined) return null;
  if (!leaf.tableId) return "pick a table";
  if (!leaf.attributeId) return "pick an attribute";
  if (!leaf.matchType) return "pick a match type";
  if (leaf.matchType === "exists") return null;
  if (leaf.matchType === "in") {
    const blank = leaf.values.findIndex((text) => !String(text).trim());
    return blank < 0 ? null : `fill in or remove value ${blank + 1}`;
  }
  if (leaf.matchType === "between") return leaf.low.trim() && leaf.high.trim() ? null : "enter both ends of the range";
  if (leaf.matchType === "within_last") return leaf.value.trim() ? null : "enter a whole number of days";
  return String(leaf.value).trim() ? null : "enter a value";
}

/** Every part of the tree that is not complete yet: [{node, reason}]. */
function gaps(root) {
  const found = [];
  function visit(node, isRoot) {
    if (node.kind === "leaf") {
      const reason = leafGap(node);
      if (reason) found.push({ node, reason });
      return;
    }
    if (!node.children.length && !isRoot) found.push({ node, reason: "add a condition to this group, or remove it" });
    node.children.forEach((child) => visit(child, false));
  }
  visit(root, true);
  return found;
}

/** Gives each node its path in the API's terms (conditions[2][1]) and its number for people (2.1). */
function numberNodes(root) {
  const byPath = new Map();
  function visit(node, path, label) {
    node.path = path;
    node.label = label;
    byPath.set(path, node);
    if (node.kind === "group") {
      node.children.forEach((child, index) => visit(child, `${path}[${index + 1}]`, label ? `${label}.${index + 1}` : String(index + 1)));
    }
  }
  visit(root, "conditions", "");
  return byPath;
}

const FIELD_NAMES = { value: "Value", match_type: "Match type", dcp_attribute_id: "Attribute", dcp_datasource_id: "Table", type: "Type" };

/** The node an error's field names (the longest path it starts with), and what it says of it. */
function placeError(byPath, fieldPath, message) {
  let path = fieldPath;
  while (path && !byPath.has(path)) {
    const shorter = path.replace(/(\[\d+\]|\.[A-Za-z_]+)$/, "");
    path = shorter === path ? "" : shorter;
  }
  const node = byPath.get(path) || byPath.get("conditions");
  const rest = fieldPath.slice(path.length).replace(/^\./, "");
  if (!rest) return { node, text: message };
  if (rest === "[0]") return { node, text: `Operator: ${message}` };
  return { node, text: `${rest.replace(/^[A-Za-z_]+/, (word) => FIELD_NAMES[word] || word)}: ${message}` };
}

// ---------------------------------------------------------------------------------------------
// The conditions editor

function attributeIndex(tables) {
  const index = new Map();
  for (const tableItem of tables) {
    for (const attribute of tableItem.attributes || []) {
      index.set(`${tableItem.id}/${attribute.id}`, { ...attribute, table: tableItem, tableArchived: tableItem.archived });
    }
  }
  return index;
}

function option(value, label, selected) {
  return h("option", { value, selected: String(value) === String(selected) }, label);
}

/** A badge styled as `kind` (a status the stylesheet knows) with words of its own. */
function marker(kind, text) {
  const element = badge(kind);
  element.textContent = text;
  return element;
}

function labelled(text, control, extra = {}) {
  const id = `cond-${control.dataset.key.replace(/[^\w-]/g, "-")}`;
  control.id = id;
  if (extra.hint) control.setAttribute("aria-describedby", `${id}-hint`);
  return h(
    "div",
    { class: `field ${extra.class || ""}` },
    h("label", { for: id }, text),
    control,
    extra.hint ? h("p", { class: "hint", id: `${id}-hint` }, extra.hint) : null,
  );
}

/**
 * The editor of a condition tree. `onChange()` is called after every change; `problems` and
 * `outcomes` are shown next to the node they name until the next change.
 */
function conditionsEditor({ tables, root, readOnly, onChange }) {
  const attributes = attributeIndex(tables);
  const activeTables = tables.filter((t) => !t.archived);
  const element = h("div", { class: "cond-editor" });
  let byPath = new Map();

  function changed(structural) {
    if (structural) render();
    clearMarks();
    onChange();
  }

  function clearMarks() {
    for (const node of byPath.values()) {
      setText(node.problemEl, "");
      setText(node.outcomeEl, "");
      if (node.element) node.element.classList.remove("held", "not-held", "has-problem");
    }
  }

  function setText(target, text) {
    if (target) target.textContent = text;
  }

  function render() {
    const focusKey = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.key : null;
    byPath = numberNodes(root);
    mount(element, groupElement(root, null));
    refocus(focusKey);
  }

  function refocus(key) {
    if (!key) return;
    const target = element.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (target) target.focus();
  }

  function rerenderLeaf(leaf, parent) {
    const focusKey = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.key : null;
    const old = leaf.element;
    old.replaceWith(leafElement(leaf, parent));
    refocus(focusKey);
  }

  function groupElement(group, parent) {
    const isRoot = parent === null;
    const name = isRoot ? "Conditions" : `Group ${group.label}`;
    const operator = h(
      "select",
      {
        dataset: { key: `${group.key}:op` },
        disabled: readOnly,
        onchange: (event) => {
          group.op = event.target.value;
          changed(false);
        },
      },
      OPERATORS.map((item) => option(item.value, item.label, group.op)),
    );
    // Nested groups' buttons say where they add, for those who hear them out of their place.
    const where = () => (isRoot ? null : h("span", { class: "offscreen" }, ` in group ${group.label}`));
    const actions = readOnly
      ? null
      : h(
          "div",
          { class: "actions" },
          h("button", { type: "button", dataset: { key: `${group.key}:add` }, onclick: () => addTo(group, newLeaf()) }, "Add condition", where()),
          h("button", { type: "button", dataset: { key: `${group.key}:group` }, onclick: () => addTo(group, newGroup("or", [newLeaf()])) }, "Add group", where()),
          isRoot
            ? null
            : h("button", { type: "button", class: "danger", onclick: () => remove(group, parent) }, "Remove group", h("span", { class: "offscreen" }, ` ${group.label}`)),
        );
    group.problemEl = h("p", { class: "field-error" });
    group.outcomeEl = null;
    group.element = h(
      "fieldset",
      { class: `cond-group${isRoot ? " cond-root" : ""}` },
      h("legend", {}, name),
      labelled("Operator", operator, { class: "cond-op" }),
      group.problemEl,
      group.children.length
        ? h(
            "ol",
            { class: "cond-list" },
            group.children.map((child) => h("li", {}, child.kind === "group" ? groupElement(child, group) : leafElement(child, group))),
          )
        : h("p", { class: "hint" }, isRoot ? "No conditions yet: add one to start." : "An empty group: add a condition to it."),
      actions,
    );
    return group.element;
  }

  function addTo(group, node) {
    group.children.push(node);
    changed(true);
    const first = node.kind === "leaf" ? node : node.children[0];
    refocus(`${first.key}:table`);
  }

  function remove(node, parent) {
    parent.children.splice(parent.children.indexOf(node), 1);
    changed(true);
    refocus(`${parent.key}:add`);
  }

  function leafElement(leaf, parent) {
    const attribute = attributes.get(`${leaf.tableId}/${leaf.attributeId}`);
    const select = (part, items, selected, onchange, placeholder) =>
      h(
        "select",
        { dataset: { key: `${leaf.key}:${part}` }, disabled: readOnly, onchange },
        placeholder ? option("", placeholder, selected) : null,
        items,
      );
    const tableChoices = activeTables.map((t) => option(t.id, t.name, leaf.tableId));
    const chosenTable = tables.find((t) => String(t.id) === String(leaf.tableId));
    if (leaf.tableId && !activeTables.includes(chosenTable)) {
      tableChoices.push(option(leaf.tableId, chosenTable ? `${chosenTable.name} (archived)` : `table ${leaf.tableId} (gone)`, leaf.tableId));
    }
    const attributeChoices = ((chosenTable && chosenTable.attributes) || [])
      .filter((a) => !a.archived)
      .map((a) => option(a.id, `${a.name} (${a.datatype}${a.format ? `, ${a.format}` : ""})`, leaf.attributeId));
    if (leaf.attributeId && (!attribute || attribute.archived || attribute.tableArchived)) {
      attributeChoices.push(option(leaf.attributeId, attribute ? `${attribute.name} (archived)` : `attribute ${leaf.attributeId} (gone)`, leaf.attributeId));
    }
    const allowed = attribute ? MATCH_TYPES[attribute.datatype] || [] : [];
    const matchChoices = allowed.map((type) => option(type, MATCH_LABELS[type], leaf.matchType));
    if (leaf.matchType && !allowed.includes(leaf.matchType)) matchChoices.push(option(leaf.matchType, leaf.matchType, leaf.matchType));

    const update = (apply) => (event) => {
      apply(event.target.value);
      rerenderLeaf(leaf, parent);
      changed(false);
    };
    leaf.problemEl = h("p", { class: "field-error" });
    leaf.outcomeEl = h("p", { class: "cond-outcome", "aria-live": "polite" });
    leaf.element = h(
      "fieldset",
      { class: "cond-leaf" },
      h("legend", {}, `Condition ${leaf.label}`),
      labelled("Table", select("table", tableChoices, leaf.tableId, update((value) => pickTable(leaf, value)), "Choose a table…")),
      labelled(
        "Attribute",
        select("attribute", attributeChoices, leaf.attributeId, update((value) => pickAttribute(leaf, value, attributes)), leaf.tableId ? "Choose an attribute…" : "Choose a table first"),
      ),
      labelled("Match type", select("match", matchChoices, leaf.matchType, update((value) => pickMatchType(leaf, value)), attribute ? null : "Choose an attribute first")),
      valueEditor(leaf, attribute, () => changed(false), () => {
        rerenderLeaf(leaf, parent);
        changed(false);
      }),
      readOnly
        ? null
        : h(
            "div",
            { class: "cond-remove" },
            h("button", { type: "button", class: "link", onclick: () => remove(leaf, parent) }, "Remove", h("span", { class: "offscreen" }, ` condition ${leaf.label}`)),
          ),
      leaf.kept !== undefined
        ? h("p", { class: "hint cond-wide" }, "This condition names an attribute that is archived or gone, so it never holds: pick another attribute or remove it.")
        : null,
      leaf.outcomeEl,
      leaf.problemEl,
    );
    return leaf.element;
  }

  function valueEditor(leaf, attribute, onInput, onRestructure) {
    if (!attribute || !leaf.matchType || leaf.matchType === "exists" || leaf.kept !== undefined) return null;
    const kind = inputKind(attribute);
    const input = (part, value, apply, label, extra = {}) => {
      const props = { dataset: { key: `${leaf.key}:${part}` }, disabled: readOnly };
      let control;
      if (kind.type === "bool" && !extra.days) {
        control = h(
          "select",
          { ...props, onchange: (event) => { apply(event.target.value); onInput(); } },
          option("true", "true", value || "true"),
          option("false", "false", value || "true"),
        );
        if (!value) apply("true");
      } else {
        const type = extra.days ? { type: "number", step: "1", inputmode: "numeric" } : kind;
        control = h("input", {
          ...props,
          type: type.type,
          step: type.step,
          inputmode: type.inputmode,
          min: extra.days ? "1" : null,
          value,
          oninput: (event) => {
            apply(event.target.value);
            onInput();
          },
        });
      }
      return labelled(label, control, { hint: extra.hint });
    };
    const utc = kind.utc ? "UTC" + (attribute.format === "epoch" ? ", sent as epoch milliseconds" : "") : null;
    if (leaf.matchType === "within_last") {
      return input("value", leaf.value, (v) => { leaf.value = v; }, "Days", { days: true, hint: "A whole number of days up to now" });
    }
    if (leaf.matchType === "between") {
      return h(
        "div",
        { class: "cond-range" },
        input("low", leaf.low, (v) => { leaf.low = v; }, "From", { hint: utc }),
        input("high", leaf.high, (v) => { leaf.high = v; }, "To (included)", { hint: utc }),
      );
    }
    if (leaf.matchType === "in") {
      return h(
        "div",
        { class: "cond-list-values cond-wide" },
        h(
          "ol",
          {},
          leaf.values.map((text, index) =>
            h(
              "li",
              {},
              input(`v${index}`, text, (v) => { leaf.values[index] = v; }, `Value ${index + 1}`, { hint: index === 0 ? utc : null }),
              leaf.values.length > 1 && !readOnly
                ? h(
                    "button",
                    {
                      type: "button",
                      class: "link",
                      onclick: () => {
                        leaf.values.splice(index, 1);
                        onRestructure();
                      },
                    },
                    "Remove",
                    h("span", { class: "offscreen" }, ` value ${index + 1}`),
                  )
                : null,
            ),
          ),
        ),
        readOnly
          ? null
          : h(
              "button",
              {
                type: "button",
                dataset: { key: `${leaf.key}:addvalue` },
                onclick: () => {
                  leaf.values.push("");
                  onRestructure();
                  refocus(`${leaf.key}:v${leaf.values.length - 1}`);
                },
              },
              "Add value",
            ),
      );
    }
    return input("value", leaf.value, (v) => { leaf.value = v; }, "Value", { hint: utc });
  }

  render();
  return {
    element,
    json: () => (root.children.length ? treeJson(root, attributes) : "[]"),
    gaps: () => gaps(root),
    isEmpty: () => !root.children.length,
    clearMarks,
    /** Errors the API named with `conditions…` paths, or local gaps, next to their nodes. */
    showProblems(items) {
      clearMarks();
      for (const item of items) {
        const placed = item.node ? { node: item.node, text: `Complete this: ${item.reason}.` } : placeError(byPath, item.field, item.message);
        const target = placed.node;
        if (!target || !target.problemEl) continue;
        target.problemEl.textContent = target.problemEl.textContent ? `${target.problemEl.textContent} ${placed.text}` : placed.text;
        target.element.classList.add("has-problem");
      }
    },
    /** Marks each leaf the evaluation names with whether it held. */
    showOutcome(conditions) {
      clearMarks();
      for (const leaf of conditions) {
        const node = byPath.get(leaf.path);
        if (!node || !node.outcomeEl) continue;
        node.outcomeEl.replaceChildren(
          marker(leaf.held ? "matched" : "held_not", leaf.held ? "held" : "did not hold"),
          " ",
          leaf.held ? "for this visitor" : leaf.usable ? "for this visitor" : "(its attribute is archived)",
        );
        node.element.classList.add(leaf.held ? "held" : "not-held");
      }
    },
    describeLeaf(path) {
      const node = byPath.get(path);
      if (!node || node.kind !== "leaf") return { label: path, table: "", attribute: "" };
      const attribute = attributes.get(`${node.tableId}/${node.attributeId}`);
      return {
        label: `Condition ${node.label}`,
        table: attribute ? attribute.table.name : `table ${node.tableId}`,
        attribute: attribute ? attribute.name : `attribute ${node.attributeId}`,
      };
    },
  };
}

function pickTable(leaf, value) {
  Object.assign(leaf, { tableId: value, attributeId: "", matchType: "", value: "", values: [""], low: "", high: "" });
  delete leaf.kept;
}

function pickAttribute(leaf, value, attributes) {
  const before = attributes.get(`${leaf.tableId}/${leaf.attributeId}`);
  const after = attributes.get(`${leaf.tableId}/${value}`);
  leaf.attributeId = value;
  delete leaf.kept;
  const sameKind = before && after && before.datatype === after.datatype && before.format === after.format;
  if (!sameKind) Object.assign(leaf, { value: "", values: [""], low: "", high: "" });
  const allowed = after ? MATCH_TYPES[after.datatype] || [] : [];
  if (!allowed.includes(leaf.matchType)) leaf.matchType = after ? "exact" : "";
}

/** A new match type keeps what was typed where it still fits (one value ↔ the first of a list). */
function pickMatchType(leaf, value) {
  const first = leaf.matchType === "in" ? leaf.values[0] : leaf.matchType === "between" ? leaf.low : leaf.value;
  const days = leaf.matchType === "within_last" || value === "within_last";
  leaf.matchType = value;
  const carried = days ? "" : first || "";
  Object.assign(leaf, { value: carried, values: [carried], low: carried, high: "" });
}

// ---------------------------------------------------------------------------------------------
// The builder screen

async function postJsonText(path, text) {
  const response = await request("POST", path, { body: text, headers: { "Content-Type": "application/json" } });
  return response.json();
}

/** Splits an API error into the part about conditions (shown in the editor) and the rest. */
function splitTreeErrors(error) {
  if (!(error instanceof ApiError)) return { tree: [], rest: error };
  const tree = error.errors.filter((item) => /^conditions(\[|\.|$)/.test(item.field));
  if (!tree.length) return { tree, rest: error };
  const others = error.errors.filter((item) => !tree.includes(item));
  const rest = new ApiError(error.status, {
    code: error.code,
    message: "Some conditions are not valid: see the messages next to them.",
    errors: others,
  });
  return { tree, rest };
}

function countPanel() {
  const figure = h("output", { class: "count-figure", "aria-live": "polite" }, "—");
  const note = h("p", { class: "hint", "aria-live": "polite" });
  return {
    element: h("section", { class: "panel", "aria-label": "Members now" }, h("h2", {}, "Members now"), figure, note),
    show(value, why = "") {
      figure.textContent = value;
      note.textContent = why;
    },
  };
}

function evaluatePanel({ serviceId, projectId, editor }) {
  const result = h("div", { class: "evaluation", "aria-live": "polite" });
  const panel = h(
    "section",
    { class: "panel", "aria-label": "Check a visitor" },
    h("h2", {}, "Check a visitor"),
    h("p", { class: "hint" }, "Evaluates the conditions as they are in the editor, saved or not, for one Optimizely user."),
    form({
      label: "Check a visitor",
      submit: "Evaluate",
      fields: [field({ label: "Optimizely user id", name: "user", required: true, autocomplete: "off" })],
      async onSubmit(values) {
        const user = values.user.trim();
        if (!user) throw new ApiError(400, { message: "Enter an Optimizely user id.", errors: [{ field: "user", message: "is required" }] });
        const missing = editor.gaps();
        if (editor.isEmpty() || missing.length) {
          if (missing.length) editor.showProblems(missing);
          throw new ApiError(400, { message: "Complete the conditions first." });
        }
        let answer;
        try {
          answer = await postJsonText(
            `/api/audiences/evaluate/${serviceId}/${encodeURIComponent(user)}`,
            `{"project_id":${projectId},"conditions":${editor.json()}}`,
          );
        } catch (error) {
          const { tree, rest } = splitTreeErrors(error);
          if (tree.length) editor.showProblems(tree);
          throw rest;
        }
        const outcome = answer.audiences[0];
        editor.showOutcome(outcome.conditions);
        showResult(user, outcome);
      },
    }),
    result,
  );
  function showResult(user, outcome) {
    mount(
      result,
      h(
        "p",
        { class: "evaluation-verdict" },
        marker(outcome.matched ? "matched" : "held_not", outcome.matched ? "matched" : "not matched"),
        " ",
        h("strong", {}, user),
        outcome.matched ? " is in this audience." : " is not in this audience.",
      ),
      table(
        [
          ["Condition", (leaf) => editor.describeLeaf(leaf.path).label],
          ["Table", (leaf) => editor.describeLeaf(leaf.path).table],
          ["Attribute", (leaf) => editor.describeLeaf(leaf.path).attribute],
          ["Match type", (leaf) => leaf.matchType],
          ["Held", (leaf) => (leaf.held ? "yes" : leaf.usable ? "no" : "no (archived)")],
        ],
        outcome.conditions,
        { caption: "Each condition for this visitor" },
      ),
    );
  }
  return {
    element: panel,
    stale() {
      if (result.firstChild && !result.querySelector(".stale")) {
        result.prepend(h("p", { class: "hint stale" }, "The conditions have changed since this check: evaluate again."));
      }
    },
  };
}

function membersPanel(audienceId) {
  const saved = h("p", { "aria-live": "polite" });
  const list = h("div", {});
  let perPage = 25;
  function refresh() {
    loadInto(
      saved,
      () => api.get(`${V1}/audiences/${audienceId}/members/count`),
      (answer) => h("span", {}, "Saved audience: ", h("strong", {}, count(answer.count)), ` member${answer.count === 1 ? "" : "s"}`),
      "Counting",
    );
    mount(
      list,
      pager({
        fetchPage: (path) => (path ? api.page(path) : api.page(`${V1}/audiences/${audienceId}/members`, { per_page: perPage })),
        render: (items) => table([["Optimizely user id", (member) => h("code", {}, member.optimizely_user_id)]], items),
        emptyMessage: "No members: no known Optimizely user matches the saved conditions.",
        what: "Loading the members",
      }),
    );
  }
  const size = field({ label: "Per page", name: "per_page", type: "select", value: String(perPage), options: ["10", "25", "100", "1000"] });
  size.querySelector("select").addEventListener("change", (event) => {
    perPage = Number(event.target.value);
    refresh();
  });
  refresh();
  return {
    element: h("section", { class: "panel", "aria-label": "Members" }, h("div", { class: "toolbar panel-head" }, h("h2", { class: "grow" }, "Members"), size), saved, list),
    refresh,
  };
}

async function loadBuilder({ serviceId, projectId, audienceId }) {
  const audience = audienceId ? await api.get(`${V1}/audiences/${audienceId}`) : null;
  const pid = audience ? audience.project_id : projectId;
  const [project, tables] = await Promise.all([api.get(`${V1}/projects/${pid}`), serviceTables(serviceId)]);
  return { audience, project, tables };
}

async function renderBuilder(params, main, ctx) {
  const { serviceId } = params;
  const { audience, project, tables } = await loadBuilder(params);
  const readOnly = Boolean(audience && audience.archived);
  const root = audience ? treeFromJson(parseConditionsText(audience.conditions), attributeIndex(tables)) : newGroup("and");
  const live = countPanel();
  let timer = null;
  let asked = 0;
  let evaluation = null;

  const editor = conditionsEditor({
    tables,
    root,
    readOnly,
    onChange() {
      if (evaluation) evaluation.stale();
      clearTimeout(timer);
      asked += 1;
      live.show("…", "Counting as the conditions change");
      timer = setTimeout(countNow, COUNT_DELAY_MS);
    },
  });
  evaluation = evaluatePanel({ serviceId, projectId: project.id, editor });

  async function countNow() {
    const mine = ++asked;
    const missing = editor.gaps();
    if (editor.isEmpty()) return live.show("—", "Add a condition to count its members.");
    if (missing.length) {
      const first = missing[0];
      const what = first.node.kind === "leaf" ? `condition ${first.node.label}` : `group ${first.node.label}`;
      return live.show("—", `Incomplete: ${what}: ${first.reason}.`);
    }
    try {
      const answer = await postJsonText(`${V1}/projects/${project.id}/audiences/count`, `{"conditions":${editor.json()}}`);
      if (mine !== asked) return undefined;
      editor.showProblems([]);
      return live.show(count(answer.count), "Known Optimizely users matching the conditions now.");
    } catch (error) {
      if (mine !== asked) return undefined;
      const { tree } = splitTreeErrors(error);
      if (tree.length) {
        editor.showProblems(tree);
        return live.show("—", "The conditions are not valid: see the messages next to them.");
      }
      return live.show("—", describe(error));
    }
  }

  const members = audience ? membersPanel(audience.id) : null;
  const title = h("span", {}, audience ? audience.name : "New audience");
  const saveForm = form({
    label: "Audience",
    submit: audience ? "Save audience" : "Create audience",
    fields: [
      field({ label: "Name", name: "name", value: audience ? audience.name : "", required: true, disabled: readOnly }),
      field({ label: "Description", name: "description", type: "textarea", value: audience ? audience.description : "", disabled: readOnly, rows: 2 }),
      editor.element,
    ],
    async onSubmit(values) {
      const missing = editor.gaps();
      if (missing.length) {
        editor.showProblems(missing);
        throw new ApiError(400, { message: "Complete the conditions marked below first." });
      }
      const body = `{"name":${JSON.stringify(values.name.trim())},"description":${JSON.stringify(values.description)},"conditions":${JSON.stringify(editor.json())}}`;
      let saved;
      try {
        if (audience) {
          saved = await (await request("PUT", `${V1}/audiences/${audience.id}`, { body, headers: { "Content-Type": "application/json" } })).json();
        } else {
          saved = await postJsonText(`${V1}/projects/${project.id}/audiences`, body);
        }
      } catch (error) {
        const { tree, rest } = splitTreeErrors(error);
        if (tree.length) editor.showProblems(tree);
        throw rest;
      }
      if (!audience) {
        notify(`Audience “${saved.name}” created`);
        ctx.navigate(`/services/${serviceId}/audiences/${saved.id}`);
        return;
      }
      Object.assign(audience, saved);
      title.textContent = saved.name;
      notify(`Audience “${saved.name}” saved`);
      members.refresh();
    },
  });
  if (readOnly) saveForm.querySelector("button[type=submit]").disabled = true;

  const archive = audience && !readOnly
    ? h(
        "button",
        {
          type: "button",
          class: "danger",
          async onclick() {
            const yes = await confirmAction(`Archive the audience “${audience.name}”? It can no longer be changed or used.`, "Archive");
            if (!yes) return;
            try {
              await api.del(`${V1}/audiences/${audience.id}`);
              notify(`Audience “${audience.name}” archived`);
              ctx.navigate(`/services/${serviceId}/audiences/${audience.id}`);
            } catch (error) {
              notify(describe(error), "error");
            }
          },
        },
        "Archive audience",
      )
    : null;

  mount(
    main,
    h("p", { class: "crumbs" }, h("a", { href: servicePath(serviceId, "/audiences") }, "Audiences"), " › ", project.project_name),
    h("div", { class: "toolbar" }, h("h1", { class: "grow" }, title, " ", audience ? badge(audience.archived ? "archived" : "active") : null), archive),
    readOnly ? h("p", { class: "state empty" }, "This audience is archived: it is shown as it was, and can no longer be changed.") : null,
    h(
      "div",
      { class: "builder" },
      h("section", { class: "panel builder-main", "aria-label": "Definition" }, saveForm),
      h("div", { class: "builder-side" }, live.element, evaluation.element),
    ),
    members ? members.element : h("p", { class: "hint" }, "Its members are listed here once the audience is saved."),
  );
  countNow();
  return () => clearTimeout(timer);
}

export const routes = [
  { path: "/services/:serviceId/audiences", title: "Audiences", render: renderAudiences },
  { path: "/services/:serviceId/projects/:projectId/audiences/new", title: "New audience", render: renderBuilder },
  { path: "/services/:serviceId/audiences/:audienceId", title: "Audience", render: renderBuilder },
];

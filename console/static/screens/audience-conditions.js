// The editor of an audience's condition tree, and the tree as the API reads and writes it.

import { h, mount } from "../lib/dom.js";
import { badge } from "../lib/ui.js";

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
export const MATCH_LABELS = {
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

/**
 * The whole tree as JSON text, which the API takes for `conditions`; written here rather than by
 * JSON.stringify so numbers go out exactly as typed. Call only on a tree without gaps.
 */
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
export function marker(kind, text) {
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
 * The editor of a condition tree, starting from `conditions` (the API's JSON text; "" for none).
 * `onChange()` is called after every change; problems and a visitor's outcome are shown next
 * to the nodes they name until the next change.
 */
export function conditionsEditor({ tables, conditions, readOnly, onChange }) {
  const attributes = attributeIndex(tables);
  const root = treeFromJson(parseConditionsText(conditions), attributes);
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
    group.problemEl = h("p", { class: "cond-problem" });
    group.outcomeEl = null;
    group.element = h(
      "fieldset",
      { class: "cond-group" },
      h("legend", {}, name),
      labelled(["Operator", isRoot ? null : h("span", { class: "offscreen" }, ` of group ${group.label}`)], operator, { class: "cond-op" }),
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
    // Not "field-error": the form clears those on submit, and these outlive a submit.
    leaf.problemEl = h("p", { class: "cond-problem" });
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
          leaf.usable ? "for this visitor" : "(its attribute is archived)",
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

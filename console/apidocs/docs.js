// The API reference: renders this gateway's /openapi.json for people. Operations are grouped
// by tag; each shows its parameters, request body and answers, and a filter narrows the list.

import { h, mount } from "/console/static/lib/dom.js";

const METHODS = ["get", "post", "put", "delete", "patch"];
// The pattern the gateway's string fields carry: any text without NUL.
const NO_NUL = "^[^\\u0000]*$";
const root = document.getElementById("reference");

/** The object a local `$ref` ("#/components/...") points at. */
function resolve(doc, ref) {
  return ref
    .replace(/^#\//, "")
    .split("/")
    .reduce((node, part) => (node ? node[part.replace(/~1/g, "/").replace(/~0/g, "~")] : undefined), doc);
}

/** Text whose `backticked` words are code, as the document's descriptions write them. */
function prose(text) {
  return String(text)
    .split("`")
    .map((part, index) => (index % 2 ? h("code", {}, part) : part));
}

function refName(ref) {
  return ref.split("/").pop();
}

/** A short type for a schema: `string`, `integer | null`, `array of Table`, a link for a named schema. */
function typeOf(schema) {
  if (!schema || typeof schema !== "object") return "any";
  if (schema.$ref) return h("a", { href: `#schema-${refName(schema.$ref)}` }, refName(schema.$ref));
  if ("const" in schema) return JSON.stringify(schema.const);
  const kinds = Array.isArray(schema.type) ? schema.type : schema.type ? [schema.type] : [];
  if (kinds.includes("array") && schema.items) {
    const rest = kinds.filter((kind) => kind !== "array");
    return [h("span", {}, "array of "), typeOf(schema.items), rest.length ? ` | ${rest.join(" | ")}` : ""];
  }
  if (schema.oneOf) return "one of";
  if (schema.allOf) return schema.allOf.map((part, index) => [index ? " with " : "", refinement(part) || typeOf(part)]);
  return kinds.length ? kinds.join(" | ") : "any";
}

/** A part of an `allOf` that only pins fields to values (e.g. an error's status), in words. */
function refinement(schema) {
  const properties = Object.entries(schema.properties || {});
  if (schema.type || schema.$ref || !properties.length || !properties.every(([, value]) => "const" in value)) return null;
  return properties.map(([name, value]) => `${name} ${JSON.stringify(value.const)}`).join(", ");
}

/** The limits a schema sets, in words. */
function rules(schema) {
  const said = [];
  if (schema.enum) said.push(`one of ${schema.enum.map((value) => JSON.stringify(value)).join(", ")}`);
  if (schema.format) said.push(schema.format);
  if (schema.minimum !== undefined) said.push(`≥ ${schema.minimum}`);
  if (schema.maximum !== undefined) said.push(`≤ ${schema.maximum}`);
  if (schema.minLength !== undefined) said.push(`at least ${schema.minLength} characters`);
  if (schema.maxLength !== undefined) said.push(`at most ${schema.maxLength} characters`);
  if (schema.maxItems !== undefined) said.push(`at most ${schema.maxItems} items`);
  if (schema.pattern === NO_NUL) said.push("no NUL characters");
  else if (schema.pattern) said.push(`matches ${schema.pattern}`);
  if (schema.default !== undefined) said.push(`default ${JSON.stringify(schema.default)}`);
  if (schema.readOnly) said.push("read-only");
  if (schema.additionalProperties === false) said.push("no other fields");
  return said;
}

/** A schema as a nested list of its fields; named schemas are links, described once under Schemas. */
function schemaTree(schema, depth = 0) {
  if (!schema || typeof schema !== "object" || schema.$ref || depth > 6) return null;
  if (schema.allOf && schema.allOf.every((part) => part.$ref || refinement(part))) return null;
  if (schema.oneOf || schema.allOf) {
    const parts = schema.oneOf || schema.allOf;
    return h(
      "ul",
      { class: "schema" },
      parts.map((part) =>
        h("li", {}, h("span", { class: "prop-type" }, typeOf(part)), part.description ? ` — ${part.description}` : "", schemaTree(part, depth + 1)),
      ),
    );
  }
  const items = [];
  const required = new Set(schema.required || []);
  for (const [name, property] of Object.entries(schema.properties || {})) {
    const said = rules(property);
    items.push(
      h(
        "li",
        {},
        h("span", { class: "prop-name" }, name),
        " ",
        h("span", { class: "prop-type" }, typeOf(property)),
        required.has(name) ? h("span", { class: "prop-required" }, " required") : null,
        said.length ? h("span", { class: "prop-rule" }, ` (${said.join("; ")})`) : null,
        property.description ? ` — ${property.description}` : null,
        schemaTree(property, depth + 1),
      ),
    );
  }
  if (schema.additionalProperties && typeof schema.additionalProperties === "object") {
    const names = schema.propertyNames && schema.propertyNames.pattern ? ` matching ${schema.propertyNames.pattern}` : "";
    items.push(
      h("li", {}, h("span", { class: "prop-name" }, `any name${names}`), " ", h("span", { class: "prop-type" }, typeOf(schema.additionalProperties))),
    );
  }
  if (schema.items && !schema.items.$ref) {
    const nested = schemaTree(schema.items, depth + 1);
    if (nested) items.push(h("li", {}, "each item:", nested));
  }
  return items.length ? h("ul", { class: "schema" }, items) : null;
}

/** One line naming the media type, the schema's type and its limits, then its fields. */
function schemaBlock(schema, mediaType) {
  const said = rules(schema);
  return [
    h(
      "p",
      { class: "op-meta" },
      mediaType ? [h("code", {}, mediaType), " "] : null,
      h("span", { class: "prop-type" }, typeOf(schema)),
      said.length ? ` (${said.join("; ")})` : "",
      schema.description ? ` — ${schema.description}` : "",
    ),
    schemaTree(schema),
  ];
}

function parametersTable(parameters) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "In"), h("th", {}, "Type"), h("th", {}, "Rules"), h("th", {}, "About"))),
      h(
        "tbody",
        {},
        parameters.map((parameter) =>
          h(
            "tr",
            {},
            h("td", { "data-label": "Name" }, h("code", {}, parameter.name), parameter.required ? h("span", { class: "prop-required" }, " required") : null),
            h("td", { "data-label": "In" }, parameter.in),
            h("td", { "data-label": "Type" }, typeOf(parameter.schema)),
            h("td", { "data-label": "Rules" }, rules(parameter.schema || {}).join("; ")),
            h("td", { "data-label": "About" }, parameter.description || ""),
          ),
        ),
      ),
    ),
  );
}

function responsesList(doc, responses) {
  return h(
    "ul",
    { class: "responses" },
    Object.entries(responses).map(([status, declared]) => {
      const response = declared.$ref ? resolve(doc, declared.$ref) : declared;
      const content = Object.entries(response.content || {});
      const headers = Object.entries(response.headers || {});
      return h(
        "li",
        { class: `status-${status[0]}` },
        h("p", { class: "op-meta" }, h("span", { class: "status-code" }, status), " ", prose(response.description || "")),
        content.map(([mediaType, body]) => schemaBlock(body.schema || {}, mediaType)),
        headers.length
          ? h(
              "p",
              { class: "op-meta" },
              "Headers: ",
              headers.map(([name, header], index) => [index ? ", " : "", h("code", {}, name), header.required ? " (always)" : ""]),
            )
          : null,
        response.links
          ? h(
              "p",
              { class: "op-meta" },
              "Leads to: ",
              Object.values(response.links).map((link, index) => [index ? ", " : "", h("a", { href: `#${link.operationId}` }, link.operationId)]),
            )
          : null,
      );
    }),
  );
}

function operationCard(doc, path, method, operation) {
  const card = h(
    "details",
    { class: "operation", id: operation.operationId, dataset: { search: `${method} ${path} ${operation.summary} ${operation.operationId}`.toLowerCase() } },
    h(
      "summary",
      {},
      h("span", { class: `method method-${method}` }, method.toUpperCase()),
      h("span", { class: "op-path" }, path),
      h("span", { class: "op-summary" }, operation.summary),
    ),
  );
  card.addEventListener(
    "toggle",
    () => {
      if (card.open && card.childElementCount === 1) card.append(operationBody(doc, operation));
    },
  );
  return card;
}

function operationBody(doc, operation) {
  const secured = (operation.security || []).length > 0;
  const body = operation.requestBody;
  return h(
    "div",
    { class: "operation-body" },
    operation.description ? h("p", {}, prose(operation.description)) : null,
    h(
      "p",
      { class: "op-meta" },
      `Operation id `,
      h("code", {}, operation.operationId),
      secured ? " · needs a token (Token header or Authorization: Bearer)" : " · no credentials needed",
    ),
    operation.parameters && operation.parameters.length ? [h("h4", {}, "Parameters"), parametersTable(operation.parameters)] : null,
    body
      ? [
          h("h4", {}, `Request body${body.required ? "" : " (optional)"}`),
          body.description ? h("p", { class: "op-meta" }, body.description) : null,
          Object.entries(body.content || {}).map(([mediaType, media]) => schemaBlock(media.schema || {}, mediaType)),
        ]
      : null,
    h("h4", {}, "Responses"),
    responsesList(doc, operation.responses || {}),
  );
}

function render(doc) {
  const byTag = new Map((doc.tags || []).map((tag) => [tag.name, { tag, operations: [] }]));
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const method of METHODS) {
      const operation = item[method];
      if (!operation) continue;
      const name = (operation.tags || ["Other"])[0];
      if (!byTag.has(name)) byTag.set(name, { tag: { name }, operations: [] });
      byTag.get(name).operations.push(operationCard(doc, path, method, operation));
    }
  }
  const groups = [...byTag.values()].filter((group) => group.operations.length);
  const sections = groups.map((group, index) =>
    h(
      "section",
      { class: "tag-section", id: `tag-${index}`, "aria-labelledby": `tag-${index}-title` },
      h("h2", { id: `tag-${index}-title` }, group.tag.name),
      group.tag.description ? h("p", { class: "hint" }, group.tag.description) : null,
      group.operations,
    ),
  );
  const schemas = Object.entries((doc.components && doc.components.schemas) || {}).map(([name, schema]) =>
    h("div", { class: "component panel", id: `schema-${name}` }, h("h3", {}, name), schemaBlock(schema)),
  );
  const counts = groups.map((group) => h("span", { class: "toc-count" }, ` ${group.operations.length}`));
  const filter = h("input", { type: "search", id: "docs-filter", placeholder: "method, path or words", autocomplete: "off" });
  const shown = h("p", { class: "hint", id: "docs-shown" });
  const total = groups.reduce((sum, group) => sum + group.operations.length, 0);
  const apply = () => {
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    let visible = 0;
    groups.forEach((group, index) => {
      let inGroup = 0;
      for (const card of group.operations) {
        const match = words.every((word) => card.dataset.search.includes(word));
        card.hidden = !match;
        if (match) inGroup += 1;
      }
      sections[index].hidden = inGroup === 0;
      counts[index].textContent = ` ${inGroup}`;
      visible += inGroup;
    });
    shown.textContent = words.length ? `${visible} of ${total} operations` : `${total} operations`;
  };
  filter.addEventListener("input", apply);
  mount(
    root,
    h(
      "div",
      { class: "docs" },
      h(
        "nav",
        { class: "docs-toc", "aria-label": "Areas" },
        h("ul", {}, groups.map((group, index) => h("li", {}, h("a", { href: `#tag-${index}` }, group.tag.name), counts[index]))),
        h("p", {}, h("a", { href: "#schemas" }, "Schemas")),
      ),
      h(
        "div",
        {},
        h("h1", {}, doc.info.title, " ", h("span", { class: "badge" }, doc.info.version)),
        h("div", { class: "docs-intro panel" }, doc.info.summary ? h("p", {}, h("strong", {}, doc.info.summary)) : null, doc.info.description ? h("p", {}, prose(doc.info.description)) : null),
        h("div", { class: "field docs-filter" }, h("label", { for: "docs-filter" }, "Filter operations"), filter, shown),
        sections,
        h("section", { id: "schemas", "aria-labelledby": "schemas-title" }, h("h2", { id: "schemas-title" }, "Schemas"), schemas),
      ),
    ),
  );
  apply();
  openFromHash();
}

/** Opens the operation a link such as /docs#createTable names, and brings it into view. */
function openFromHash() {
  const id = decodeURIComponent(window.location.hash.replace(/^#/, ""));
  if (!id) return;
  const target = document.getElementById(id);
  if (!target) return;
  if (target.tagName === "DETAILS") target.open = true;
  target.scrollIntoView();
}

window.addEventListener("hashchange", openFromHash);

async function start() {
  try {
    const response = await fetch("/openapi.json", { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`/openapi.json answered ${response.status}`);
    render(await response.json());
  } catch (error) {
    mount(
      root,
      h("div", { class: "state error", role: "alert" }, h("p", {}, "The API reference could not be loaded: ", String(error.message || error)), h("p", {}, h("a", { href: "/openapi.json" }, "Open the document itself"))),
    );
  }
}

start();

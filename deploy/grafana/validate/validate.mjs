#!/usr/bin/env node
// Validates Grafana dashboard JSON (the classic "panels" model, schemaVersion 39+) before Grafana
// ever sees it. Grafana accepts almost anything at provisioning time and fails later, in the
// browser, one panel at a time; this catches the mistakes in CI instead.
//
// What is checked, for each file:
//   1. Schema: the dashboard against the Dashboard kind, every panel against Panel / RowPanel,
//      and each panel's `options` and `fieldConfig.defaults.custom` against that panel plugin's
//      own Options / FieldConfig. The schemas are generated at run time from the TypeScript types
//      Grafana publishes in @grafana/schema (themselves generated from Grafana's CUE kinds), so
//      they follow the pinned package version. Objects are closed: an unknown key (a typo such as
//      "gridpos") is an error, as are wrong types, missing required keys and values outside an enum.
//   2. Panels: unique ids, a gridPos inside the 24-column grid, no two panels overlapping, a known
//      panel plugin, a description on every non-row panel.
//   3. Queries: each target has a unique refId and a PromQL `expr` that parses (Prometheus' own
//      lezer grammar) and names only metrics listed in allowed-metrics.txt.
//   4. Datasources: every reference is the templated `${datasource}` variable, which exists and is
//      a Prometheus datasource variable.
//
// Usage:
//   node validate.mjs FILE.json...            exit 1 if any file has an error
//   node validate.mjs --self-test FILE.json   breaks FILE in known ways and checks each is caught

import { readFileSync, existsSync } from "node:fs";
import { dirname, join, basename } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import Ajv from "ajv";
import { createGenerator } from "ts-json-schema-generator";
import { parser as promqlParser } from "@prometheus-io/lezer-promql";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const schemaPkgDir = dirname(require.resolve("@grafana/schema/package.json"));
const schemaPkgVersion = JSON.parse(readFileSync(join(schemaPkgDir, "package.json"), "utf8")).version;
const rawTypes = join(schemaPkgDir, "dist", "types", "raw");

const MIN_SCHEMA_VERSION = 39;
const GRID_COLUMNS = 24;
// Core panel plugins that @grafana/schema carries no panelcfg for: only the generic Panel checks.
const CORE_PANELS_WITHOUT_SCHEMA = new Set(["alertlist", "flamegraph", "traces", "welcome"]);

// ---------------------------------------------------------------------------------------------
// Schemas, generated from @grafana/schema's .d.ts files.

const generators = new Map();
function schemaFor(dtsPath, typeName) {
  let gen = generators.get(dtsPath);
  if (!gen) {
    gen = createGenerator({
      path: dtsPath,
      skipTypeCheck: true,
      expose: "export",
      topRef: true,
      jsDoc: "none",
      additionalProperties: false,
    });
    generators.set(dtsPath, gen);
  }
  return gen.createSchema(typeName);
}

const ajv = new Ajv({ allErrors: true, strict: false });
const validators = new Map();
function validatorFor(key, build) {
  if (!validators.has(key)) validators.set(key, build());
  return validators.get(key);
}

const dashboardDts = join(rawTypes, "dashboard", "x", "types.gen.d.ts");

function dashboardValidator() {
  return validatorFor("Dashboard", () => {
    const s = schemaFor(dashboardDts, "Dashboard");
    // Panels are checked one by one below (Panel or RowPanel by their `type`), which gives one
    // precise error per mistake instead of the union's errors for both alternatives.
    s.definitions.Dashboard.properties.panels = { type: "array", items: { type: "object" } };
    return ajv.compile(s);
  });
}

function panelValidator(kind /* "Panel" | "RowPanel" */) {
  return validatorFor(kind, () => {
    const s = schemaFor(dashboardDts, kind);
    if (kind === "RowPanel") {
      s.definitions.RowPanel.properties.panels = { type: "array", items: { type: "object" } };
    }
    return ajv.compile(s);
  });
}

// Returns { options, custom } validators for a panel plugin, or null when the package has no
// panelcfg for that plugin id. `custom` is null when the plugin declares no FieldConfig.
function pluginValidators(pluginId) {
  return validatorFor(`plugin:${pluginId}`, () => {
    if (!/^[a-z0-9-]+$/.test(pluginId)) return null;
    const dts = join(rawTypes, "composable", pluginId, "panelcfg", "x", "types.gen.d.ts");
    if (!existsSync(dts)) return null;
    const exported = readFileSync(dts, "utf8");
    const has = (name) => new RegExp(`export (interface|type) ${name}\\b`).test(exported);
    return {
      options: has("Options") ? ajv.compile(schemaFor(dts, "Options")) : null,
      custom: has("FieldConfig") ? ajv.compile(schemaFor(dts, "FieldConfig")) : null,
    };
  });
}

function ajvErrors(validate, prefix) {
  return (validate.errors ?? []).map((e) => {
    let msg = e.message ?? "is invalid";
    if (e.keyword === "additionalProperties") msg += `: "${e.params.additionalProperty}"`;
    if (e.keyword === "enum") msg += `: ${e.params.allowedValues.map((v) => JSON.stringify(v)).join(", ")}`;
    return `${prefix + e.instancePath || "/"}: ${msg}`;
  });
}

// ---------------------------------------------------------------------------------------------
// Metric names the worker exposes.

function loadAllowedMetrics() {
  const names = new Set();
  const text = readFileSync(join(here, "allowed-metrics.txt"), "utf8");
  for (const raw of text.split("\n")) {
    const line = raw.replace(/#.*/, "").trim();
    if (!line) continue;
    const [name, kind] = line.split(/\s+/);
    names.add(name);
    if (kind === "histogram") for (const s of ["_bucket", "_sum", "_count"]) names.add(name + s);
  }
  return names;
}

// ---------------------------------------------------------------------------------------------
// PromQL.

// Grafana replaces its macros and variables before the query reaches Prometheus; stand-ins of the
// same syntactic kind let the grammar judge the rest.
function substituteGrafanaMacros(expr) {
  return expr
    .replace(/\$\{?__(range_s|range_ms|interval_ms)\}?/g, "60")
    .replace(/\$\{?__(rate_interval|interval|range)\}?/g, "5m")
    .replace(/\$\{([A-Za-z0-9_]+)(:[a-z]+)?\}|\$([A-Za-z0-9_]+)|\[\[([A-Za-z0-9_]+)\]\]/g, "x");
}

function checkPromQL(expr, allowed, where) {
  const errors = [];
  const q = substituteGrafanaMacros(expr);
  const tree = promqlParser.parse(q);
  const used = [];
  tree.iterate({
    enter(node) {
      if (node.type.isError) {
        const at = node.from;
        errors.push(`${where}: PromQL syntax error at offset ${at}: ${JSON.stringify(q.slice(Math.max(0, at - 20), at + 20))}`);
        return false;
      }
      if (node.name === "Identifier" && node.node.parent?.name === "VectorSelector") {
        used.push(q.slice(node.from, node.to));
      }
      if (node.name === "LabelName" && q.slice(node.from, node.to) === "__name__") {
        errors.push(`${where}: select metrics by name, not with a __name__ matcher`);
      }
      return undefined;
    },
  });
  if (used.length === 0 && errors.length === 0) errors.push(`${where}: the query selects no metric`);
  // The parse tree is the authority; the plain grep also catches names the grammar did not see
  // as selectors (for example inside a malformed part).
  const grepped = expr.match(/\boffboarder_[A-Za-z0-9_:]+/g) ?? [];
  for (const name of new Set([...used, ...grepped])) {
    if (!allowed.has(name)) errors.push(`${where}: metric "${name}" is not one the worker exposes (allowed-metrics.txt)`);
  }
  return errors;
}

// ---------------------------------------------------------------------------------------------
// One dashboard.

function isObject(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function allPanels(dashboard) {
  // [{ panel, path }], rows' nested panels included.
  const out = [];
  const top = Array.isArray(dashboard.panels) ? dashboard.panels : [];
  top.forEach((p, i) => {
    out.push({ panel: p, path: `/panels/${i}`, nested: false });
    if (isObject(p) && p.type === "row" && Array.isArray(p.panels)) {
      p.panels.forEach((c, j) => out.push({ panel: c, path: `/panels/${i}/panels/${j}`, nested: true }));
    }
  });
  return out;
}

function datasourceVariables(dashboard) {
  const list = dashboard?.templating?.list;
  return new Map((Array.isArray(list) ? list : []).filter(isObject).map((v) => [v.name, v]));
}

function checkDatasourceRef(ref, vars, where) {
  if (ref === undefined) return [];
  if (!isObject(ref)) return [`${where}: datasource must be an object {type, uid}`];
  const errors = [];
  const m = typeof ref.uid === "string" ? ref.uid.match(/^\$\{?([A-Za-z0-9_]+)\}?$/) : null;
  if (!m) {
    errors.push(`${where}: datasource uid must be the templated "\${datasource}", not ${JSON.stringify(ref.uid)}`);
  } else {
    const v = vars.get(m[1]);
    if (!v) errors.push(`${where}: datasource variable "${m[1]}" is not defined in templating.list`);
    else if (v.type !== "datasource") errors.push(`${where}: variable "${m[1]}" is of type ${JSON.stringify(v.type)}, not "datasource"`);
  }
  if (ref.type !== "prometheus") errors.push(`${where}: datasource type must be "prometheus", not ${JSON.stringify(ref.type)}`);
  return errors;
}

export function validateDashboard(dashboard, allowed) {
  const errors = [];
  if (!isObject(dashboard)) return ["/: a dashboard must be a JSON object"];

  // 1. Schema.
  const vDash = dashboardValidator();
  if (!vDash(dashboard)) errors.push(...ajvErrors(vDash, ""));

  const entries = allPanels(dashboard);
  for (const { panel, path } of entries) {
    if (!isObject(panel)) {
      errors.push(`${path}: a panel must be an object`);
      continue;
    }
    const kind = panel.type === "row" ? "RowPanel" : "Panel";
    const v = panelValidator(kind);
    if (!v(panel)) errors.push(...ajvErrors(v, path));
    if (kind === "RowPanel" || typeof panel.type !== "string") continue;

    const plugin = pluginValidators(panel.type);
    if (plugin === null) {
      if (!CORE_PANELS_WITHOUT_SCHEMA.has(panel.type)) {
        errors.push(`${path}/type: no panel plugin "${panel.type}" in @grafana/schema ${schemaPkgVersion}`);
      }
      continue;
    }
    if (plugin.options) {
      if (!isObject(panel.options)) errors.push(`${path}/options: required for a ${panel.type} panel`);
      else if (!plugin.options(panel.options)) errors.push(...ajvErrors(plugin.options, `${path}/options`));
    }
    const custom = panel.fieldConfig?.defaults?.custom;
    if (custom !== undefined) {
      if (plugin.custom) {
        if (!plugin.custom(custom)) errors.push(...ajvErrors(plugin.custom, `${path}/fieldConfig/defaults/custom`));
      } else if (!isObject(custom) || Object.keys(custom).length > 0) {
        errors.push(`${path}/fieldConfig/defaults/custom: a ${panel.type} panel has no custom field config`);
      }
    }
  }

  // Dashboard-level conventions.
  if (typeof dashboard.schemaVersion === "number" && dashboard.schemaVersion < MIN_SCHEMA_VERSION) {
    errors.push(`/schemaVersion: ${dashboard.schemaVersion} is older than ${MIN_SCHEMA_VERSION}`);
  }
  for (const key of ["uid", "title"]) {
    if (typeof dashboard[key] !== "string" || dashboard[key].trim() === "") errors.push(`/${key}: required, non-empty`);
  }
  const vars = datasourceVariables(dashboard);
  const dsVar = vars.get("datasource");
  if (!dsVar || dsVar.type !== "datasource" || dsVar.query !== "prometheus") {
    errors.push(`/templating/list: needs a variable named "datasource" of type "datasource" with query "prometheus"`);
  }

  // 2. Panels: ids, grid, descriptions.
  const ids = new Map();
  const boxes = [];
  for (const { panel, path, nested } of entries) {
    if (!isObject(panel)) continue;
    if (!Number.isInteger(panel.id)) errors.push(`${path}/id: every panel needs an integer id`);
    else if (ids.has(panel.id)) errors.push(`${path}/id: ${panel.id} is already used by ${ids.get(panel.id)}`);
    else ids.set(panel.id, path);

    const g = panel.gridPos;
    if (!isObject(g)) {
      errors.push(`${path}/gridPos: required, an object {x, y, w, h}`);
    } else if ([g.x, g.y, g.w, g.h].every(Number.isInteger)) {
      if (g.x < 0 || g.y < 0 || g.w < 1 || g.h < 1 || g.x + g.w > GRID_COLUMNS) {
        errors.push(`${path}/gridPos: ${JSON.stringify(g)} is outside the ${GRID_COLUMNS}-column grid`);
      } else if (!nested) {
        for (const b of boxes) {
          if (g.x < b.g.x + b.g.w && b.g.x < g.x + g.w && g.y < b.g.y + b.g.h && b.g.y < g.y + g.h) {
            errors.push(`${path}/gridPos: overlaps ${b.path}`);
          }
        }
        boxes.push({ g, path });
      }
    } else {
      errors.push(`${path}/gridPos: x, y, w and h must be integers`);
    }

    if (panel.type !== "row" && (typeof panel.description !== "string" || panel.description.trim() === "")) {
      errors.push(`${path}/description: every panel needs a one-line description for the analyst`);
    }
  }

  // 3 and 4. Queries and datasources.
  for (const { panel, path } of entries) {
    if (!isObject(panel) || panel.type === "row") continue;
    errors.push(...checkDatasourceRef(panel.datasource, vars, `${path}/datasource`));
    if (!Array.isArray(panel.targets)) continue;
    const refIds = new Set();
    panel.targets.forEach((t, k) => {
      const where = `${path}/targets/${k}`;
      if (!isObject(t)) {
        errors.push(`${where}: a target must be an object`);
        return;
      }
      if (typeof t.refId !== "string" || !t.refId) errors.push(`${where}/refId: required`);
      else if (refIds.has(t.refId)) errors.push(`${where}/refId: "${t.refId}" repeats in this panel`);
      else refIds.add(t.refId);
      errors.push(...checkDatasourceRef(t.datasource, vars, `${where}/datasource`));
      if (typeof t.expr !== "string" || t.expr.trim() === "") errors.push(`${where}/expr: required, a PromQL query`);
      else errors.push(...checkPromQL(t.expr, allowed, `${where}/expr`));
    });
  }
  return errors;
}

function validateFile(file, allowed) {
  let text;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    return [`cannot read: ${e.message}`];
  }
  let dashboard;
  try {
    dashboard = JSON.parse(text);
  } catch (e) {
    return [`not JSON: ${e.message}`];
  }
  return validateDashboard(dashboard, allowed);
}

// ---------------------------------------------------------------------------------------------
// Self-test: known breakages, each of which must be reported.

function firstPanel(d, type) {
  return d.panels.find((p) => p.type === type);
}

const BREAKAGES = [
  ["gridPos is a string", (d) => { firstPanel(d, "timeseries").gridPos = "x"; }],
  ["panel type is a number", (d) => { firstPanel(d, "stat").type = 5; }],
  ["schemaVersion missing", (d) => { delete d.schemaVersion; }],
  ["gridPos lacks h", (d) => { delete firstPanel(d, "timeseries").gridPos.h; }],
  ["misspelt panel key", (d) => { const p = firstPanel(d, "timeseries"); p.fieldconfig = p.fieldConfig; delete p.fieldConfig; }],
  ["unknown panel plugin", (d) => { firstPanel(d, "timeseries").type = "timeseris"; }],
  ["timeseries legend placement outside enum", (d) => { firstPanel(d, "timeseries").options.legend.placement = "top"; }],
  ["stat options without reduceOptions", (d) => { delete firstPanel(d, "stat").options.reduceOptions; }],
  ["threshold mode outside enum", (d) => { firstPanel(d, "stat").fieldConfig.defaults.thresholds.mode = "relative"; }],
  ["custom fieldConfig typo", (d) => { firstPanel(d, "timeseries").fieldConfig.defaults.custom.lineWidht = 2; }],
  ["duplicate panel id", (d) => { const ps = d.panels.filter((p) => p.type !== "row"); ps[1].id = ps[0].id; }],
  ["overlapping panels", (d) => { const ps = d.panels.filter((p) => p.type !== "row"); ps[1].gridPos = { ...ps[0].gridPos }; }],
  ["metric the worker does not expose", (d) => { firstPanel(d, "timeseries").targets[0].expr = "sum(rate(offboarder_outcome_total[5m]))"; }],
  ["PromQL syntax error", (d) => { firstPanel(d, "timeseries").targets[0].expr = "sum(rate(offboarder_outcomes_total[5m])"; }],
  ["hard-coded datasource uid", (d) => { firstPanel(d, "timeseries").datasource = { type: "prometheus", uid: "prometheus" }; }],
  ["missing description", (d) => { delete firstPanel(d, "stat").description; }],
];

function selfTest(file, allowed) {
  const pristine = JSON.parse(readFileSync(file, "utf8"));
  let passed = 0;
  let failed = 0;
  const base = validateDashboard(structuredClone(pristine), allowed);
  if (base.length) {
    console.log(`FAIL  ${basename(file)} itself must be valid for the self-test:\n  ${base.join("\n  ")}`);
    failed++;
  } else {
    console.log(`ok    ${basename(file)} as committed: no errors`);
    passed++;
  }
  for (const [name, breakIt] of BREAKAGES) {
    const d = structuredClone(pristine);
    breakIt(d);
    const errs = validateDashboard(d, allowed);
    if (errs.length) {
      console.log(`ok    caught: ${name}\n        ${errs[0]}${errs.length > 1 ? ` (+${errs.length - 1} more)` : ""}`);
      passed++;
    } else {
      console.log(`FAIL  not caught: ${name}`);
      failed++;
    }
  }
  console.log(`dashboard validator self-test: ${passed} passed, ${failed} failed`);
  return failed === 0;
}

// ---------------------------------------------------------------------------------------------

function main(argv) {
  const selfTestMode = argv[0] === "--self-test";
  const files = selfTestMode ? argv.slice(1) : argv;
  if (files.length === 0) {
    console.error("usage: validate.mjs [--self-test] DASHBOARD.json...");
    return 2;
  }
  const allowed = loadAllowedMetrics();
  console.log(`schemas: @grafana/schema ${schemaPkgVersion} (Dashboard, Panel, RowPanel, panel plugin Options/FieldConfig)`);
  if (selfTestMode) return selfTest(files[0], allowed) ? 0 : 1;

  let bad = 0;
  for (const file of files) {
    const errors = validateFile(file, allowed);
    if (errors.length) {
      bad++;
      console.log(`FAIL  ${file}: ${errors.length} error(s)`);
      for (const e of errors) console.log(`  ${e}`);
    } else {
      console.log(`ok    ${file}`);
    }
  }
  return bad ? 1 : 0;
}

process.exitCode = main(process.argv.slice(2));

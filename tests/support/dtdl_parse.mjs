// Parse DTDL files with Microsoft's DTDLParser (compiled to WebAssembly, shipped in the
// npm package @digicatapult/dtdl-parser). Usage: node dtdl_parse.mjs PARSER_DIR FILE...
// Prints one JSON line: {"parser": version, "ok": bool, "elements": n, "errors": [...]}.
import fs from "fs";
import path from "path";
import { pathToFileURL } from "url";

const [parserDir, ...files] = process.argv.slice(2);
const entry = path.join(parserDir, "build", "interop", "modelParser.js");
const parser = await import(pathToFileURL(entry).href);
const models = files.map((f) => JSON.parse(fs.readFileSync(f, "utf-8")));
const result = { parser: parser.parserVersion(), ok: false, elements: 0, errors: [] };
try {
  result.elements = Object.keys(JSON.parse(parser.parse(JSON.stringify(models)))).length;
  result.ok = true;
} catch (error) {
  let detail = String(error && error.message ? error.message : error);
  try { detail = JSON.parse(detail.replace(/^Error: /, "")); } catch (_) { /* as text */ }
  result.errors = Array.isArray(detail.Errors) ? detail.Errors.map((e) => e.Cause) : [detail];
}
console.log(JSON.stringify(result));
process.exit(0);

// Validates AsyncAPI documents with the AsyncAPI project's own parser (`@asyncapi/parser`):
// `node validate.mjs FILE...` prints every diagnostic and exits 1 when any is an error.
import { readFile } from "node:fs/promises";
import { DiagnosticSeverity, Parser } from "@asyncapi/parser";

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node validate.mjs ASYNCAPI_FILE...");
  process.exit(2);
}

const severities = Object.fromEntries(
  Object.entries(DiagnosticSeverity).map(([name, level]) => [level, name.toLowerCase()]),
);
const parser = new Parser();
let failed = false;
for (const file of files) {
  const { document, diagnostics } = await parser.parse(await readFile(file, "utf8"), {
    source: file,
  });
  for (const { severity, code, message, path } of diagnostics) {
    console.log(`${file}: ${severities[severity]} ${code}: ${message} (at /${path.join("/")})`);
  }
  const errors = diagnostics.filter(({ severity }) => severity === DiagnosticSeverity.Error);
  if (document === undefined || errors.length > 0) {
    failed = true;
    console.log(`${file}: INVALID (${errors.length} errors)`);
  } else {
    console.log(`${file}: valid AsyncAPI ${document.version()}`);
  }
}
process.exit(failed ? 1 : 0);

// Semantic analysis of KQL with Microsoft's Kusto language service (@kusto/language-service-next).
//
// Reads one JSON request on stdin and writes one JSON answer on stdout, so a test session
// analyses every query in a single Node process:
//   request: {"tables": [{"name", "columns": [{"name", "type"}]}],
//             "functions": [{"name", "parameters": "(a:string='x', ...)", "body": "..."}],
//             "queries": [{"id", "text"}]}
//   answer:  {"results": [{"id", "diagnostics": [{"severity", "code", "message", "start", "length"}],
//                          "columns": [{"name", "type"}]}]}
// `columns` is the result schema of the query's last statement (empty if it returns no table).
'use strict';

const path = require('path');

const packageDir = path.join(__dirname, 'node_modules', '@kusto', 'language-service-next');
// The package's main module needs the Bridge.NET runtime loaded first; together they define
// the global `Kusto.Language`.
require(path.join(packageDir, 'bridge.js'));
require(path.join(packageDir, 'Kusto.Language.Bridge.js'));

const { KustoCode, GlobalState, Symbols } = Kusto.Language;

const SCALAR_TYPES = {
  string: Symbols.ScalarTypes.String,
  long: Symbols.ScalarTypes.Long,
  int: Symbols.ScalarTypes.Int,
  real: Symbols.ScalarTypes.Real,
  boolean: Symbols.ScalarTypes.Bool,
  bool: Symbols.ScalarTypes.Bool,
  datetime: Symbols.ScalarTypes.DateTime,
  timespan: Symbols.ScalarTypes.TimeSpan,
  guid: Symbols.ScalarTypes.Guid,
  dynamic: Symbols.ScalarTypes.Dynamic,
};

function scalarType(name, where) {
  const type = SCALAR_TYPES[name.toLowerCase()];
  if (!type) {
    throw new Error(`${where}: unknown column type '${name}' (known: ${Object.keys(SCALAR_TYPES).join(', ')})`);
  }
  return type;
}

function table(spec) {
  const columns = spec.columns.map(
    (column) => new Symbols.ColumnSymbol(column.name, scalarType(column.type, `${spec.name}.${column.name}`),
      null, null, null, null));
  return new Symbols.TableSymbol.$ctor4(spec.name, columns);
}

function storedFunction(spec) {
  // A database function as Log Analytics stores a saved search with a function alias.
  return new Symbols.FunctionSymbol.$ctor16(spec.name, spec.parameters, `{\n${spec.body}\n}`, null);
}

function list(items) {
  const out = [];
  for (let index = 0; items && index < items.Count; index++) {
    out.push(items.getItem(index));
  }
  return out;
}

function analyse(globals, query) {
  const code = KustoCode.ParseAndAnalyze(query.text, globals);
  const diagnostics = list(code.GetDiagnostics()).map((diagnostic) => ({
    severity: diagnostic.Severity,
    code: diagnostic.Code,
    message: diagnostic.Message,
    start: diagnostic.Start,
    length: diagnostic.Length,
  }));
  const resultType = code.ResultType;
  const columns = resultType && resultType.Columns
    ? list(resultType.Columns).map((column) => ({ name: column.Name, type: column.Type.Name }))
    : [];
  return { id: query.id, diagnostics, columns };
}

function main(request) {
  const members = request.tables.map(table).concat((request.functions || []).map(storedFunction));
  const database = new Symbols.DatabaseSymbol.ctor('workspace', members);
  const globals = GlobalState.Default.WithDatabase(database);
  return { results: request.queries.map((query) => analyse(globals, query)) };
}

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  process.stdout.write(JSON.stringify(main(JSON.parse(input))));
});

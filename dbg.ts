import { loadScenario, runScenario } from "./src/toolstack/scenario.ts";
const sc = loadScenario(process.argv[2]!);
const r = runScenario(sc, Number(process.argv[3] ?? 1));
console.log(r.failures.slice(0, 5).join("\n"));
const e = r.hv.lastGuestError as Error | undefined;
if (e) console.log(e.stack?.split("\n").slice(0, 12).join("\n"));

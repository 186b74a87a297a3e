// Makes the contract's host import resolvable in Node (to the test host): load it before any
// plugin module, e.g. `node --import @switchyard/plugin/register --test test/`.
import { register } from "node:module";

register("./test-resolve.js", import.meta.url);

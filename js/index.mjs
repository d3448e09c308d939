// ES module entry of @gondolin/native: the same objects as the CommonJS
// entry (Node detects its named exports from the `module.exports = {...}`).
export * from "./index.cjs";
export { default } from "./index.cjs";

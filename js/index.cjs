"use strict";
// CommonJS entry of @gondolin/native.

const { VM } = require("./vm.cjs");
const { ExecProcess, ExecResult } = require("./exec.cjs");
const { buildImage, ensureImage, findImage } = require("./image.cjs");

module.exports = { VM, ExecProcess, ExecResult, buildImage, ensureImage, findImage };

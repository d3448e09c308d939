"use strict";
// `gondolin image …`: the local image store's names (upstream cli.md
// "image"; js/image-store.cjs does the work).

const fs = require("node:fs");
const path = require("node:path");

const IMAGE_USAGE = `Usage: gondolin image <command> [options]

Images live in the local store ($GONDOLIN_IMAGE_STORE, else
~/.cache/gondolin/images): one directory per build id, plus NAME:TAG refs.
A SELECTOR is an image directory, a build id, or NAME[:TAG] (TAG defaults
to latest). The default image is debian-base:latest.

Commands:
  ls                          list refs, then images no ref names
  inspect SELECTOR            print the image's manifest and where it is (JSON)
  tag SELECTOR NAME[:TAG]     name an image (a directory is imported first)
  rm NAME[:TAG] | BUILD_ID    remove a ref; a build id removes the image
                              and every ref to it
  import DIR                  copy an image directory into the store
  pull REF [--tag NAME[:TAG]] fetch an image from an OCI registry
                              (REF: HOST[:PORT]/REPO[:TAG]) into the store and
                              name it (default: REPO's last segment:TAG)
  push SELECTOR REF           upload an image to an OCI registry

Options:
  --arch ARCH                 aarch64 | x86_64 (default: this machine's)
  --insecure                  pull/push over plain HTTP (always so for
                              127.0.0.1, localhost, ::1); registry logins
                              come from $DOCKER_CONFIG/config.json or
                              ~/.docker/config.json
  -h, --help                  show this help
`;

/** `gondolin image ARGS`; UsageError comes from cli.cjs (exit 2 with usage). */
function cmdImage(args, UsageError) {
  const store = require("./image-store.cjs");
  const positional = [];
  let arch;
  const oci = { insecure: undefined, tag: undefined }; // pull/push options
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "-h" || a === "--help") {
      process.stdout.write(IMAGE_USAGE);
      return 0;
    }
    if (a === "--arch") {
      arch = args[++i];
      if (arch === undefined) throw new UsageError("--arch requires an argument", IMAGE_USAGE);
    } else if (a === "--insecure") {
      oci.insecure = true;
    } else if (a === "--tag") {
      oci.tag = args[++i];
      if (oci.tag === undefined) throw new UsageError("--tag requires an argument", IMAGE_USAGE);
    } else if (a.startsWith("-")) {
      throw new UsageError(`Unknown argument: ${a}`, IMAGE_USAGE);
    } else {
      positional.push(a);
    }
  }
  const [sub, ...rest] = positional;
  const want = (n, shape) => {
    if (rest.length !== n) throw new UsageError(`image ${sub} expects ${shape}`, IMAGE_USAGE);
  };
  switch (sub) {
    case "ls":
    case "list":
      want(0, "no arguments");
      process.stdout.write(formatList(store));
      return 0;
    case "inspect": {
      want(1, "SELECTOR");
      const r = store.resolveImageSelector(rest[0], arch);
      const manifest = JSON.parse(fs.readFileSync(path.join(r.assetDir, "manifest.json"), "utf8"));
      const refs = store
        .listImageRefs()
        .filter((x) => Object.values(x.targets).includes(r.buildId))
        .map((x) => x.reference);
      process.stdout.write(`${JSON.stringify({ ...r, refs, manifest }, null, 2)}\n`);
      return 0;
    }
    case "tag": {
      want(2, "SELECTOR NAME[:TAG]");
      const ref = store.tagImage(rest[0], rest[1], arch);
      process.stdout.write(`${ref.reference} -> ${Object.values(ref.targets).join(", ")}\n`);
      return 0;
    }
    case "rm":
    case "remove": {
      want(1, "NAME[:TAG] or BUILD_ID");
      const r = store.removeImage(rest[0], arch);
      for (const ref of r.removedRefs) process.stdout.write(`untagged ${ref}\n`);
      if (r.removedBuildId) process.stdout.write(`removed ${r.removedBuildId}\n`);
      return 0;
    }
    case "import": {
      want(1, "DIR");
      const r = store.importImageFromDirectory(rest[0]);
      process.stdout.write(`${r.created ? "imported" : "already in the store:"} ${r.buildId} (${r.arch}) ${r.assetDir}\n`);
      return 0;
    }
    case "pull":
    case "push":
      return ociCommand(sub, rest, arch, oci, want);
    case undefined:
      throw new UsageError("image needs a command", IMAGE_USAGE);
    default:
      throw new UsageError(`Unknown image command: ${sub}`, IMAGE_USAGE);
  }
}

/** `image pull REF` / `image push SELECTOR REF` (js/image-oci.cjs does the work). */
async function ociCommand(sub, rest, arch, oci, want) {
  const { pullImage, pushImage, progressPrinter } = require("./image-oci.cjs");
  const progress = progressPrinter(process.stderr);
  if (sub === "pull") {
    want(1, "REF");
    const r = await pullImage(rest[0], { arch, insecure: oci.insecure, tag: oci.tag }, progress);
    process.stdout.write(
      `Pulled ${r.reference}\n  assetDir: ${r.assetDir}\n  buildId: ${r.buildId}\n  arch: ${r.arch}\n  digest: ${r.digest}\n` +
        (r.tag ? `  tag: ${r.tag}\n` : ""),
    );
    return 0;
  }
  want(2, "SELECTOR REF");
  const r = await pushImage(rest[0], rest[1], { arch, insecure: oci.insecure }, progress);
  process.stdout.write(`Pushed ${r.buildId} (${r.arch}) to ${r.reference}\n  digest: ${r.digest}\n`);
  return 0;
}

/** Refs, then stored images no ref names (`<none>`), as aligned columns. */
function formatList(store) {
  const rows = [["REFERENCE", "ARCH", "BUILD ID", "UPDATED"]];
  const named = new Set();
  for (const r of store.listImageRefs()) {
    for (const [a, id] of Object.entries(r.targets)) {
      rows.push([r.reference, a, id, r.updatedAt]);
      named.add(id);
    }
  }
  let entries = [];
  try {
    entries = fs.readdirSync(store.imageStoreDir());
  } catch {
    // no store yet: nothing to list
  }
  for (const id of entries.sort()) {
    if (!store.isBuildId(id) || named.has(id)) continue;
    const manifest = path.join(store.imageStoreDir(), id, "manifest.json");
    let m;
    try {
      m = JSON.parse(fs.readFileSync(manifest, "utf8"));
    } catch {
      continue; // an incomplete directory is not an image
    }
    rows.push(["<none>", m.arch || "?", id, m.createdAt || "?"]);
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((v, c) => (c === r.length - 1 ? v : v.padEnd(widths[c]))).join("  ")).join("\n") + "\n";
}

module.exports = { cmdImage, IMAGE_USAGE };

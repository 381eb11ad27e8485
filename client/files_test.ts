import fc from "fast-check";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { basename, join } from "node:path";
import { e2eError, withTempDir } from "../lib/_test_util.ts";
import type { E2eError } from "../lib/errors.ts";
import {
  announcedName,
  DEFAULT_FILE_LIMITS,
  FileQuota,
  formatSize,
  freeBytes,
  hashFile,
  IncomingFile,
  parseSize,
  removeStalePartials,
  safeFileName,
} from "./files.ts";

const encoder = new TextEncoder();

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

async function names(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(dir)) out.push(entry.name);
  return out.sort();
}

function byteLength(text: string): number {
  return encoder.encode(text).length;
}

/** Receives `bytes` announced as `name` into `dir`, in chunks; returns the final path. */
async function receive(dir: string, name: string, bytes: Uint8Array): Promise<string> {
  const file = await IncomingFile.start(dir, name, bytes.length, sha256(bytes));
  for (let i = 0; i < bytes.length; i += 1000) await file.write(bytes.subarray(i, i + 1000));
  return await file.finish();
}

// ---------------------------------------------------------------------------
// safeFileName

Deno.test("safeFileName() keeps only the last path component", () => {
  const cases: Array<[string, string]> = [
    ["../../etc/passwd", "passwd"],
    ["/etc/passwd", "passwd"],
    ["a/b\\c", "c"],
    ["..\\..\\windows\\system.ini", "system.ini"],
    ["dir/", "dir"],
    ["a/..", "a"],
    ["a/./b/.", "b"],
    ["a/../..", "a"],
    ["report.pdf", "report.pdf"],
    ["my report (final).pdf", "my report (final).pdf"],
    ["é🙂.txt", "é🙂.txt"],
  ];
  for (const [announced, safe] of cases) assert.equal(safeFileName(announced), safe, announced);
});

Deno.test("safeFileName() removes NUL and control characters", () => {
  const cases: Array<[string, string]> = [
    ["a\u0000b.txt", "ab.txt"],
    ["evil\u0000/../../x", "x"],
    ["line\nbreak\r.txt", "linebreak.txt"],
    ["tab\there", "tabhere"],
    ["esc\u001b[31mred", "esc[31mred"],
    ["del\u007f", "del"],
    ["c1\u0085\u009bcontrol", "c1control"],
  ];
  for (const [announced, safe] of cases) {
    assert.equal(safeFileName(announced), safe, JSON.stringify(announced));
  }
});

Deno.test("safeFileName() removes leading dots, so a file is never hidden", () => {
  assert.equal(safeFileName(".hidden"), "hidden");
  assert.equal(safeFileName("..hidden"), "hidden");
  assert.equal(safeFileName(".bashrc"), "bashrc");
  assert.equal(safeFileName("x/.ssh"), "ssh");
  assert.equal(safeFileName(" .profile"), "profile");
  assert.equal(safeFileName(".partial-1234"), "partial-1234");
});

Deno.test('safeFileName() gives "file" when nothing usable is left', () => {
  for (
    const name of [
      "",
      "   ",
      ".",
      "..",
      "...",
      "/",
      "../..",
      "\\",
      "\u0000",
      "\n\t",
      ". .",
    ]
  ) {
    assert.equal(safeFileName(name), "file", JSON.stringify(name));
  }
});

Deno.test("safeFileName() truncates a 300-byte ASCII name to 200 bytes", () => {
  const safe = safeFileName("x".repeat(300));
  assert.equal(safe, "x".repeat(200));
});

Deno.test("safeFileName() truncates multi-byte names to at most 200 bytes of whole characters", () => {
  const cases = [
    "é".repeat(150), // 2 bytes each
    "€".repeat(100), // 3 bytes each
    "🙂".repeat(75), // 4 bytes each, two UTF-16 units
    "a" + "€".repeat(100),
    "a".repeat(197) + "🙂".repeat(10), // the cut falls inside a surrogate pair
    "a".repeat(199) + "é".repeat(50),
    "ab".repeat(98) + "🙂🙂🙂",
  ];
  for (const name of cases) {
    assert.ok(byteLength(name) > 200);
    const safe = safeFileName(name);
    assert.ok(byteLength(safe) <= 200, `${byteLength(safe)} bytes`);
    assert.ok(safe.isWellFormed(), `no lone surrogate: ${JSON.stringify(safe.slice(-4))}`);
    assert.ok(name.startsWith(safe), "a prefix of the announced name");
    // As long as possible: one more character would not fit.
    const next = [...name.slice(safe.length)][0];
    assert.ok(byteLength(safe + next) > 200, `could keep ${JSON.stringify(next)}`);
  }
});

Deno.test("safeFileName() cuts a long name first, then trims the dots and spaces the cut left at its end, so it is idempotent", () => {
  // Trimmed before the cut, "x"×197 + ". .exe" became "x"×197 + ". .", and again "x"×197.
  assert.equal(safeFileName("x".repeat(197) + ". .exe"), "x".repeat(197));
  assert.equal(safeFileName("y".repeat(199) + ". z"), "y".repeat(199));
  for (
    const name of ["x".repeat(196) + "   .exe", "x".repeat(197) + ". .exe", "é".repeat(99) + " ."]
  ) {
    const safe = safeFileName(name);
    assert.doesNotMatch(safe, /[.\s]$/, JSON.stringify(safe.slice(-6)));
    assert.equal(safeFileName(safe), safe, JSON.stringify(name));
  }
});

Deno.test("safeFileName() replaces a lone surrogate with U+FFFD, as the file system stores it", () => {
  assert.equal(safeFileName("a\ud800b.txt"), "a\ufffdb.txt");
  assert.equal(safeFileName("\udc00x\ud83d"), "\ufffdx\ufffd");
  assert.equal(safeFileName("é🙂.txt"), "é🙂.txt", "a surrogate pair is a character");
});

Deno.test("safeFileName() drops invisible characters and shows blank fillers and runs of spaces as one space, so a name cannot hide its real extension off screen", () => {
  const cases: Array<[string, string]> = [
    ["invoice.pdf" + "\u2800".repeat(60) + ".sh", "invoice.pdf .sh"], // braille blank
    ["invoice.pdf" + "\u3164".repeat(60) + ".sh", "invoice.pdf .sh"], // Hangul filler
    ["invoice.pdf\u115f\u1160\uffa0.sh", "invoice.pdf .sh"], // Hangul fillers
    ["invoice.pdf" + " ".repeat(60) + ".sh", "invoice.pdf .sh"],
    ["invoice.pdf\u00a0\u2003\u3000 \u2800.sh", "invoice.pdf .sh"], // other spaces, mixed
    ["invoice.pdf" + "\u200b\u200c\u200d\u2060\ufeff".repeat(20) + ".sh", "invoice.pdf.sh"],
    ["in\u00advoice\u{e0041}.pdf", "invoice.pdf"], // soft hyphen, a tag character
    ["a \u200b b.txt", "a b.txt"], // dropped, then the spaces around it are one run
    ["\u2800\u3164.bashrc", "bashrc"], // blanks before a leading dot are no cover for it
    ["report.pdf\u2800\u2800", "report.pdf"],
    ["\u200b\u2800", "file"],
  ];
  for (const [announced, safe] of cases) {
    assert.equal(safeFileName(announced), safe, JSON.stringify(announced));
  }
});

// Pieces of names that have broken safeFileName() or could: fillers, runs of spaces and dots,
// long runs that move the 200-byte cut, lone surrogates, separators.
const namePiece = fc.constantFrom(
  "x".repeat(60),
  "é".repeat(30),
  "🙂",
  " ",
  "   ",
  ".",
  "..",
  ".exe",
  "/",
  "\\",
  "\u0000",
  "\n",
  "\u2800",
  "\u3164",
  "\u00a0",
  "\u200b",
  "\u200d",
  "\ufeff",
  "\u202e",
  "\ud800",
  "\udc00",
  "a",
);

Deno.test("safeFileName() is idempotent, and its names have no path, no invisible or control character, no lone surrogate, no run of spaces, no dot or space at either end, and at most 200 bytes (fast-check)", () => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.array(namePiece, { maxLength: 30 }).map((pieces) => pieces.join("")),
        fc.string({ unit: "binary", maxLength: 300 }),
      ),
      (name) => {
        const safe = safeFileName(name);
        assert.equal(safeFileName(safe), safe, "not idempotent");
        assert.ok(safe.isWellFormed());
        assert.doesNotMatch(safe, /[/\\\p{Cc}\p{Default_Ignorable_Code_Point}\u2800]/u);
        assert.doesNotMatch(safe, /\s\s|[^ \S]/, "a run of spaces or a space other than U+0020");
        assert.doesNotMatch(safe, /^[.\s]|[.\s]$/);
        assert.ok(byteLength(safe) <= 200 && safe.length > 0);
      },
    ),
    { numRuns: 5_000 },
  );
});

// ---------------------------------------------------------------------------
// IncomingFile

Deno.test("IncomingFile writes into a 0600 partial file, then finish() moves it to its name", async () => {
  await withTempDir(async (dir) => {
    const bytes = encoder.encode("hello, bob\n");
    const file = await IncomingFile.start(dir, "a.txt", bytes.length, sha256(bytes));
    assert.equal(file.announced, "a.txt");
    assert.equal(file.size, bytes.length);
    assert.equal(file.sha256, sha256(bytes));
    const [partial] = await names(dir);
    assert.match(partial, /^\.partial-/);
    assert.equal((await Deno.stat(join(dir, partial))).mode! & 0o777, 0o600);

    await file.write(bytes.subarray(0, 5));
    assert.equal(file.received, 5);
    await file.write(bytes.subarray(5));
    assert.equal(file.received, bytes.length);
    const path = await file.finish();
    assert.equal(path, join(dir, "a.txt"));
    assert.deepEqual(await Deno.readFile(path), bytes);
    assert.deepEqual(await names(dir), ["a.txt"], "no partial file is left");
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
  });
});

Deno.test("IncomingFile creates a missing downloads folder with mode 0700", async () => {
  await withTempDir(async (home) => {
    const dir = join(home, "downloads", "deeper");
    const path = await receive(dir, "x.bin", Uint8Array.of(1, 2, 3));
    assert.equal(path, join(dir, "x.bin"));
    assert.equal((await Deno.stat(dir)).mode! & 0o777, 0o700);
  });
});

Deno.test("IncomingFile refuses a downloads folder every user may write in, and leaves nothing there", async () => {
  // Another user could swap a file there after its SHA-256 was checked: the page and the
  // terminal would present their bytes as the peer's.
  await withTempDir(async (home) => {
    const dir = join(home, "shared");
    await Deno.mkdir(dir);
    await Deno.chmod(dir, 0o777);
    await assert.rejects(
      IncomingFile.start(dir, "report.pdf", 3),
      e2eError("ERR_FILE", `Cannot receive files into "${dir}": every user may write in it`),
    );
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("IncomingFile receives into a folder every user may write in when it is sticky, as /tmp is (only a file's owner may rename it there)", async () => {
  await withTempDir(async (home) => {
    const dir = join(home, "tmp");
    await Deno.mkdir(dir);
    await Deno.chmod(dir, 0o1777);
    const path = await receive(dir, "x.bin", Uint8Array.of(1, 2, 3));
    assert.equal(path, join(dir, "x.bin"));
  });
});

Deno.test("IncomingFile refuses a downloads folder inside a folder every user may write in, and leaves nothing there", async () => {
  // The folder is ours and closed, but another user could rename it away and put one of theirs
  // in its place after a file's SHA-256 was checked: its path would then show their bytes.
  await withTempDir(async (home) => {
    const shared = join(home, "shared");
    await Deno.mkdir(shared);
    await Deno.chmod(shared, 0o777);
    const dir = join(shared, "downloads");
    await Deno.mkdir(dir, { mode: 0o700 });
    await assert.rejects(
      IncomingFile.start(dir, "report.pdf", 3),
      e2eError(
        "ERR_FILE",
        `Cannot receive files into "${dir}": it is inside "${shared}", which every user may write in`,
      ),
    );
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("IncomingFile receives through a symbolic link into the folder it points to, and gives that folder's path, which a changed link does not redirect", async () => {
  await withTempDir(async (home) => {
    const own = join(home, "own");
    const other = join(home, "other");
    const links = join(home, "links");
    await Deno.mkdir(own, { mode: 0o700 });
    await Deno.mkdir(other, { mode: 0o700 });
    await Deno.mkdir(links, { mode: 0o700 });
    const link = join(links, "downloads");
    await Deno.symlink(own, link);
    const path = await receive(link, "report.pdf", encoder.encode("the peer's"));
    assert.equal(path, join(own, "report.pdf"));
    // The link pointed elsewhere, at another report.pdf: the path given still has the peer's.
    await Deno.writeTextFile(join(other, "report.pdf"), "another");
    await Deno.remove(link);
    await Deno.symlink(other, link);
    assert.equal(await Deno.readTextFile(path), "the peer's");
  });
});

Deno.test("IncomingFile refuses a downloads path through a symbolic link that other users may replace: they could send the next files into any folder of ours", async () => {
  await withTempDir(async (home) => {
    const own = join(home, "own");
    const ssh = join(home, ".ssh"); // a folder of ours where a new file does harm
    const shared = join(home, "shared");
    await Deno.mkdir(own, { mode: 0o700 });
    await Deno.mkdir(ssh, { mode: 0o700 });
    await Deno.mkdir(shared);
    await Deno.chmod(shared, 0o777);
    const link = join(shared, "downloads");
    await Deno.symlink(own, link);
    const refused = e2eError(
      "ERR_FILE",
      `Cannot receive files into "${link}": it is inside "${shared}", which every user may write in`,
    );
    await assert.rejects(IncomingFile.start(link, "report.pdf", 3), refused);
    // Whoever may write in `shared` points the link at .ssh, for the next file the peer sends.
    await Deno.remove(link);
    await Deno.symlink(ssh, link);
    await assert.rejects(IncomingFile.start(link, "authorized_keys", 3), refused);
    assert.deepEqual(await names(ssh), []);
  });
});

Deno.test({
  name: "IncomingFile refuses a downloads folder that belongs to another user",
  // Only root can give a folder away.
  ignore: Deno.uid() !== 0,
  fn: async () => {
    await withTempDir(async (home) => {
      const dir = join(home, "theirs");
      await Deno.mkdir(dir, { mode: 0o755 });
      await Deno.chown(dir, 65534, 65534);
      await assert.rejects(
        IncomingFile.start(dir, "report.pdf", 3),
        e2eError("ERR_FILE", `Cannot receive files into "${dir}": it belongs to another user`),
      );
      assert.deepEqual(await names(dir), []);
    });
  },
});

Deno.test("IncomingFile receives an empty file and a file of several hundred KiB", async () => {
  await withTempDir(async (dir) => {
    const empty = await receive(dir, "empty", new Uint8Array());
    assert.equal((await Deno.stat(empty)).size, 0);
    const big = new Uint8Array(600_000).map((_, i) => (i * 31) & 0xff);
    const path = await receive(dir, "big.bin", big);
    assert.deepEqual(await Deno.readFile(path), big);
  });
});

Deno.test("IncomingFile saves under the safe name, inside the folder", async () => {
  await withTempDir(async (home) => {
    const dir = join(home, "downloads");
    const path = await receive(dir, "../../escape.txt", encoder.encode("x"));
    assert.equal(path, join(dir, "escape.txt"));
    assert.deepEqual(await names(home), ["downloads"]);
    assert.equal(await receive(dir, ".hidden", encoder.encode("y")), join(dir, "hidden"));
  });
});

Deno.test("IncomingFile.finish() gives the path the file has on disk, for a name with a lone surrogate", async () => {
  // A peer's file frame may name it "a\ud800b.txt" (JSON allows the escape); the file event,
  // history and quota ledger record the path finish() gives.
  await withTempDir(async (dir) => {
    const path = await receive(dir, "a\ud800b.txt", encoder.encode("x"));
    assert.ok(path.isWellFormed(), JSON.stringify(path));
    assert.deepEqual(await names(dir), [basename(path)]);
    assert.equal(await Deno.readTextFile(path), "x");
  });
});

Deno.test("IncomingFile never overwrites: a.txt, then a (1).txt, then a (2).txt", async () => {
  await withTempDir(async (dir) => {
    const first = await receive(dir, "a.txt", encoder.encode("first"));
    const second = await receive(dir, "a.txt", encoder.encode("second"));
    const third = await receive(dir, "dir/a.txt", encoder.encode("third"));
    assert.equal(first, join(dir, "a.txt"));
    assert.equal(second, join(dir, "a (1).txt"));
    assert.equal(third, join(dir, "a (2).txt"));
    assert.equal(await Deno.readTextFile(first), "first");
    assert.equal(await Deno.readTextFile(second), "second");
    assert.equal(await Deno.readTextFile(third), "third");
  });
});

Deno.test("IncomingFile never overwrites a name without extension, nor a file that was there before", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "README"), "mine");
    assert.equal(await receive(dir, "README", encoder.encode("theirs")), join(dir, "README (1)"));
    assert.equal(await Deno.readTextFile(join(dir, "README")), "mine");
  });
});

// What link(2) says on vfat or exFAT (EPERM, the error class Deno gives it), for a folder here.
function noHardLinks(): Promise<void> {
  return Promise.reject(new Deno.errors.PermissionDenied("Operation not permitted (os error 1)"));
}

Deno.test("IncomingFile on a file system without hard links keeps the file under a free name, never over a file that was there", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "a.txt"), "mine");
    const bytes = encoder.encode("theirs");
    const file = await IncomingFile.start(dir, "a.txt", bytes.length, sha256(bytes), {
      link: noHardLinks,
    });
    await file.write(bytes);
    assert.equal(await file.finish(), join(dir, "a (1).txt"));
    assert.equal(await Deno.readTextFile(join(dir, "a.txt")), "mine");
    assert.equal(await Deno.readTextFile(join(dir, "a (1).txt")), "theirs");
    assert.equal((await Deno.stat(join(dir, "a (1).txt"))).mode! & 0o777, 0o600);
    assert.deepEqual(await names(dir), ["a (1).txt", "a.txt"], "no partial file is left");
  });
});

Deno.test("IncomingFile.finish() that cannot put the file in place fails with ERR_FILE and a hint, not a system error, and leaves nothing", async () => {
  await withTempDir(async (home) => {
    const dir = join(home, "downloads");
    const bytes = encoder.encode("theirs");
    const file = await IncomingFile.start(dir, "a.txt", bytes.length, sha256(bytes));
    await file.write(bytes);
    // The folder goes while the file arrives (a USB stick pulled, the user tidying up).
    await Deno.remove(dir, { recursive: true });
    await assert.rejects(
      () => file.finish(),
      (e) =>
        e2eError(
          "ERR_FILE",
          new RegExp(`^Cannot keep "a\\.txt" in "${dir}": No such file or directory$`),
        )(e) &&
        /--downloads DIR/.test((e as E2eError).hint ?? ""),
    );
    assert.deepEqual(await names(home), []);
  });
});

Deno.test("IncomingFile.finish() refuses fewer bytes than announced and deletes the partial", async () => {
  await withTempDir(async (dir) => {
    const bytes = encoder.encode("hello");
    const file = await IncomingFile.start(dir, "short.txt", 10, sha256(bytes));
    await file.write(bytes);
    await assert.rejects(
      file.finish(),
      e2eError("ERR_BAD_REQUEST", "File ended after 5 of 10 bytes"),
    );
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("IncomingFile.finish() refuses a SHA-256 mismatch and deletes the partial", async () => {
  await withTempDir(async (dir) => {
    const bytes = encoder.encode("hello");
    const file = await IncomingFile.start(
      dir,
      "bad.txt",
      bytes.length,
      sha256(encoder.encode("hellO")),
    );
    await file.write(bytes);
    await assert.rejects(
      file.finish(),
      e2eError("ERR_BAD_REQUEST", "File's SHA-256 does not match what was announced"),
    );
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("IncomingFile without a SHA-256 up front checks the one finish() is given at the end, and keeps the file", async () => {
  await withTempDir(async (dir) => {
    const bytes = encoder.encode("digest at the end\n");
    const file = await IncomingFile.start(dir, "late.txt", bytes.length);
    assert.equal(file.sha256, undefined);
    await file.write(bytes.subarray(0, 7));
    await file.write(bytes.subarray(7));
    const path = await file.finish(sha256(bytes));
    assert.equal(path, join(dir, "late.txt"));
    assert.equal(file.sha256, sha256(bytes));
    assert.deepEqual(await Deno.readFile(path), bytes);
    assert.deepEqual(await names(dir), ["late.txt"]);
  });
});

Deno.test("IncomingFile.finish() refuses a SHA-256 given at the end that does not match, and deletes the partial", async () => {
  await withTempDir(async (dir) => {
    const bytes = encoder.encode("hello");
    const file = await IncomingFile.start(dir, "tampered.txt", bytes.length);
    await file.write(bytes);
    await assert.rejects(
      file.finish(sha256(encoder.encode("hellO"))),
      e2eError("ERR_BAD_REQUEST", "File's SHA-256 does not match what was announced"),
    );
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("IncomingFile.finish() takes a SHA-256 exactly once: none at all, or a second one, is a TypeError and deletes the partial", async () => {
  await withTempDir(async (dir) => {
    const bytes = encoder.encode("x");
    const none = await IncomingFile.start(dir, "none.txt", 1);
    await none.write(bytes);
    await assert.rejects(none.finish(), TypeError);
    const twice = await IncomingFile.start(dir, "twice.txt", 1, sha256(bytes));
    await twice.write(bytes);
    await assert.rejects(twice.finish(sha256(bytes)), TypeError);
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("IncomingFile.write() refuses more bytes than announced, and abort() then removes the partial", async () => {
  await withTempDir(async (dir) => {
    const file = await IncomingFile.start(dir, "x.bin", 4, sha256(Uint8Array.of(1, 2, 3, 4)));
    await file.write(Uint8Array.of(1, 2, 3));
    await assert.rejects(
      file.write(Uint8Array.of(4, 5)),
      e2eError("ERR_BAD_REQUEST", "Malformed frame: more file data than announced"),
    );
    assert.equal(file.received, 3, "the refused bytes are not counted");
    await file.abort();
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("IncomingFile.abort() removes the partial file and may be called twice", async () => {
  await withTempDir(async (dir) => {
    const file = await IncomingFile.start(dir, "x.bin", 100, sha256(new Uint8Array(100)));
    await file.write(new Uint8Array(50));
    assert.equal((await names(dir)).length, 1);
    await file.abort();
    await file.abort();
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("IncomingFile keeps a file of 40 MiB whole while it syncs what came before the rest, and leaves no handle open after finish() or abort()", async () => {
  await withTempDir(async (dir) => {
    // What this process holds open in `dir`, as the kernel lists it.
    const held = async () => {
      const ls = await new Deno.Command("ls", { args: ["-l", `/proc/${Deno.pid}/fd`] }).output();
      return new TextDecoder().decode(ls.stdout).split("\n").filter((l) => l.includes(dir));
    };
    const bytes = new Uint8Array(40 * 1024 * 1024);
    for (let i = 0; i < bytes.length; i += 65536) {
      crypto.getRandomValues(bytes.subarray(i, i + 65536));
    }
    const file = await IncomingFile.start(dir, "big.bin", bytes.length, sha256(bytes));
    for (let i = 0; i < bytes.length; i += 1024 * 1024) {
      await file.write(bytes.subarray(i, i + 1024 * 1024));
    }
    // The file, and the handle that syncs it (and for a moment a third: while a sync runs, Deno
    // holds a duplicate of that handle on one of its threads).
    const during = (await held()).length;
    assert.ok(during === 2 || during === 3, `${during} handles open while it is written`);
    const path = await file.finish();
    assert.equal(sha256(await Deno.readFile(path)), sha256(bytes));
    assert.deepEqual(await held(), []);
    const cut = await IncomingFile.start(dir, "cut.bin", bytes.length, sha256(bytes));
    await cut.write(bytes.subarray(0, 20 * 1024 * 1024)); // a sync starts here
    await cut.abort();
    assert.deepEqual(await held(), []);
    assert.deepEqual(await names(dir), ["big.bin"]);
  });
});

Deno.test("IncomingFile keeps two transfers of one name apart while they run", async () => {
  await withTempDir(async (dir) => {
    const a = encoder.encode("from a");
    const b = encoder.encode("from b");
    const fa = await IncomingFile.start(dir, "same.txt", a.length, sha256(a));
    const fb = await IncomingFile.start(dir, "same.txt", b.length, sha256(b));
    await fb.write(b);
    await fa.write(a);
    const pb = await fb.finish();
    const pa = await fa.finish();
    assert.equal(await Deno.readTextFile(pb), "from b");
    assert.equal(await Deno.readTextFile(pa), "from a");
    assert.deepEqual(await names(dir), ["same (1).txt", "same.txt"]);
  });
});

// ---------------------------------------------------------------------------
// removeStalePartials, hashFile, announcedName

Deno.test("removeStalePartials() deletes only the partial files a client makes (.partial- and a UUID), never a file of the user's own that starts with .partial-", async () => {
  // With `--downloads ~/Documents` it runs on the user's own files at every start.
  await withTempDir(async (dir) => {
    const stale = `.partial-${crypto.randomUUID()}`;
    await Deno.writeTextFile(join(dir, stale), "x");
    const kept = [
      ".partial-draft.md",
      ".partial-1",
      `.partial-${crypto.randomUUID()}.md`,
      `.partial-${crypto.randomUUID().toUpperCase()}`,
      `x.partial-${crypto.randomUUID()}`,
      ".partial",
      "partial-1",
      "report.pdf",
    ];
    for (const name of kept) await Deno.writeTextFile(join(dir, name), "the user's");
    await Deno.mkdir(join(dir, `.partial-${crypto.randomUUID()}-dir`));
    await removeStalePartials(dir);
    const left = await names(dir);
    assert.ok(!left.includes(stale), "the stale partial file was left");
    assert.equal(left.length, kept.length + 1);
    for (const name of kept) assert.equal(await Deno.readTextFile(join(dir, name)), "the user's");
  });
});

Deno.test("removeStalePartials() leaves the partial file this process is receiving into", async () => {
  await withTempDir(async (dir) => {
    const bytes = encoder.encode("still coming");
    const file = await IncomingFile.start(dir, "a.txt", bytes.length, sha256(bytes));
    await file.write(bytes.subarray(0, 5));
    await removeStalePartials(dir);
    await file.write(bytes.subarray(5));
    assert.equal(await Deno.readTextFile(await file.finish()), "still coming");
  });
});

const FILES_MODULE = new URL("./files.ts", import.meta.url).href;

/**
 * Another client's process receiving `text` as `name` into `dir`: it writes half, says so, and
 * writes the rest and finishes once `finish()` is called, returning the path it got.
 */
async function receivingInChild(dir: string, name: string, text: string) {
  const bytes = encoder.encode(text);
  const code = `
    const { IncomingFile } = await import(${JSON.stringify(FILES_MODULE)});
    const bytes = new TextEncoder().encode(${JSON.stringify(text)});
    const file = await IncomingFile.start(${JSON.stringify(dir)}, ${JSON.stringify(name)},
      bytes.length, ${JSON.stringify(sha256(bytes))});
    await file.write(bytes.subarray(0, 4));
    await Deno.stdout.write(new TextEncoder().encode("receiving\\n"));
    for await (const _ of Deno.stdin.readable) break;
    await file.write(bytes.subarray(4));
    await Deno.stdout.write(new TextEncoder().encode(await file.finish() + "\\n"));
  `;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-config", "--no-lock", code],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).values();
  let said = "";
  while (!said.includes("receiving\n")) {
    const { value, done } = await lines.next();
    if (done) {
      const stderr = await new Response(child.stderr).text();
      throw new Error(`The child exited before receiving: ${stderr}`);
    }
    said += value;
  }
  return {
    finish: async () => {
      const writer = child.stdin.getWriter();
      await writer.write(encoder.encode("go\n"));
      await writer.close();
      let out = "";
      for (let r = await lines.next(); !r.done; r = await lines.next()) out += r.value;
      const status = await child.status;
      assert.equal(status.code, 0, await new Response(child.stderr).text());
      return out.trim();
    },
    kill: async () => {
      child.kill("SIGKILL");
      await child.status;
      await child.stdin.close().catch(() => {});
      await child.stderr.cancel();
      await lines.return?.();
    },
  };
}

Deno.test("removeStalePartials() leaves the partial file another running client is receiving into (which it then keeps), and removes the one a killed client left", async () => {
  await withTempDir(async (dir) => {
    const running = await receivingInChild(dir, "running.txt", "from a running client");
    const killed = await receivingInChild(dir, "killed.txt", "from a killed client");
    const partials = await names(dir);
    assert.equal(partials.length, 2);
    await killed.kill();
    // A second client starting on the same folder.
    await removeStalePartials(dir);
    const left = await names(dir);
    assert.equal(left.length, 1, "the killed client's partial file was left");
    const path = await running.finish();
    assert.equal(path, join(await Deno.realPath(dir), "running.txt"));
    assert.equal(await Deno.readTextFile(path), "from a running client");
    assert.deepEqual(await names(dir), ["running.txt"]);
  });
});

Deno.test("removeStalePartials() does nothing for a folder that does not exist", async () => {
  await withTempDir(async (dir) => {
    await removeStalePartials(join(dir, "missing"));
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("hashFile() gives the SHA-256 and size of a file, empty or larger than its buffer", async () => {
  await withTempDir(async (dir) => {
    const empty = join(dir, "empty");
    await Deno.writeFile(empty, new Uint8Array());
    assert.deepEqual(await hashFile(empty), {
      sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
      size: 0,
    });
    const abc = join(dir, "abc");
    await Deno.writeTextFile(abc, "abc");
    assert.deepEqual(await hashFile(abc), {
      sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
      size: 3,
    });
    const big = new Uint8Array(700_001).map((_, i) => (i * 7) & 0xff);
    const path = join(dir, "big");
    await Deno.writeFile(path, big);
    assert.deepEqual(await hashFile(path), { sha256: sha256(big), size: big.length });
  });
});

Deno.test("hashFile() throws NotFound for a missing file", async () => {
  await withTempDir(async (dir) => {
    await assert.rejects(hashFile(join(dir, "missing")), Deno.errors.NotFound);
  });
});

Deno.test("announcedName() announces only the file's own name, not its folders", () => {
  assert.equal(announcedName("/home/alice/secret/plans.pdf"), "plans.pdf");
  assert.equal(announcedName("plans.pdf"), "plans.pdf");
});

Deno.test("parseSize() reads bytes and binary and decimal units, and refuses anything else with ERR_USAGE", () => {
  assert.equal(parseSize("0"), 0);
  assert.equal(parseSize("4096"), 4096);
  assert.equal(parseSize("25MiB"), 25 * 1024 * 1024);
  assert.equal(parseSize("1.5GiB"), 1.5 * 1024 ** 3);
  assert.equal(parseSize("700MB"), 700_000_000);
  assert.equal(parseSize("2 k"), 2048);
  for (const bad of ["", "-1", "MiB", "1 furlong", "1e3", "9999999999TiB"]) {
    assert.throws(() => parseSize(bad), e2eError("ERR_USAGE", /A size is a number/), bad);
  }
});

Deno.test("formatSize() writes sizes for people", () => {
  assert.equal(formatSize(700), "700 B");
  assert.equal(formatSize(25 * 1024 * 1024), "25 MiB");
  assert.equal(formatSize(1536), "1.5 KiB");
});

Deno.test("the default file limits are those of docs/PROTOCOL.md", () => {
  assert.deepEqual({ ...DEFAULT_FILE_LIMITS }, {
    autoAccept: 25 * 1024 * 1024,
    peerBytes: 1024 ** 3,
    peerFiles: 100,
    totalBytes: 4 * 1024 ** 3,
    totalFiles: 1000,
    freeFloor: 1024 ** 3,
  });
});

Deno.test("FileQuota refuses past each per-peer and total limit, gives back what failed, and keeps the free-space floor", () => {
  let free = 10_000;
  const quota = new FileQuota("/nowhere", {
    ...DEFAULT_FILE_LIMITS,
    peerFiles: 2,
    peerBytes: 300,
    totalFiles: 3,
    totalBytes: 500,
    freeFloor: 1000,
  }, { free: () => free });
  assert.equal(quota.refusal("bob", 100), undefined);
  const give = quota.take("bob", 100);
  quota.take("bob", 100);
  assert.equal(quota.refusal("bob", 1), 'the quota of 2 files from "bob" is used up');
  give();
  give(); // twice gives back once
  assert.match(
    quota.refusal("bob", 250)!,
    /would pass the quota of 300 B from "bob" \(100 B taken\)/,
  );
  assert.equal(quota.refusal("bob", 200), undefined);
  quota.take("carol", 300);
  assert.match(quota.refusal("dave", 101)!, /would pass the quota of 500 B in all \(400 B taken\)/);
  quota.take("dave", 1);
  assert.equal(quota.refusal("erin", 0), "the quota of 3 files in all is used up");
  const roomy = new FileQuota("/nowhere", { ...DEFAULT_FILE_LIMITS, freeFloor: 1000 }, {
    free: () => free,
  });
  assert.equal(roomy.refusal("bob", 9000), undefined);
  assert.match(roomy.refusal("bob", 9001)!, /would leave less than 1000 B free on the disk/);
  free = NaN;
  const broken = new FileQuota("/nowhere", DEFAULT_FILE_LIMITS, {
    free: () => {
      throw new Error("no statfs");
    },
  });
  assert.equal(broken.refusal("bob", 1), "the free space of the downloads folder cannot be read");
});

Deno.test("FileQuota counts the files being received against the free-space floor, so files taken together cannot pass one reading of it", () => {
  // Nothing of an accepted file is on the disk yet: the free space read for the next offer
  // is the same, and without counting the first the two would go 1,200 B below the floor.
  const free = 2_000;
  const quota = new FileQuota("/nowhere", { ...DEFAULT_FILE_LIMITS, freeFloor: 1000 }, {
    free: () => free,
  });
  assert.equal(quota.refusal("bob", 600), undefined);
  const giveBack = quota.take("bob", 600);
  assert.equal(
    quota.refusal("carol", 600),
    "it would leave less than 1000 B free on the disk (2 KiB free, 600 B of it promised to " +
      "files being received)",
  );
  assert.equal(quota.refusal("carol", 400), undefined);
  // A file that failed gives its share back; one that arrived is on the disk (the free space
  // read shows it) and counts no more as being received.
  giveBack();
  assert.equal(quota.refusal("carol", 1000), undefined);
  quota.take("carol", 600);
  quota.stored("carol", "/nowhere/a.bin", 600);
  assert.equal(quota.refusal("dave", 1000), undefined);
  // Two files of one size from one peer: the second arrives, then the first fails.
  const first = quota.take("erin", 300);
  quota.take("erin", 300);
  quota.stored("erin", "/nowhere/b.bin", 300);
  first();
  assert.equal(quota.refusal("dave", 1000), undefined);
});

Deno.test("FileQuota.unstored() undoes stored() for a file not kept after all: it counts as being received until its take is given back, then not at all, and the ledger does not name it", async () => {
  await withTempDir(async (dir) => {
    const ledger = join(dir, "received.json");
    const limits = { ...DEFAULT_FILE_LIMITS, peerFiles: 1, freeFloor: 1000 };
    const quota = new FileQuota(dir, limits, { ledger, free: () => 2_000 });
    const path = join(dir, "a.bin");
    await Deno.writeTextFile(path, "x".repeat(600));
    const giveBack = quota.take("bob", 600);
    await quota.stored("bob", path, 600);
    quota.unstored("bob", path, 600);
    assert.equal(quota.refusal("bob", 1), 'the quota of 1 files from "bob" is used up');
    assert.match(quota.refusal("carol", 600)!, /600 B of it promised to files being received/);
    giveBack();
    assert.equal(quota.refusal("bob", 1), undefined);
    assert.equal(quota.refusal("carol", 1000), undefined);
    await quota.flush();
    assert.deepEqual(JSON.parse(await Deno.readTextFile(ledger)), []);
  });
});

Deno.test("FileQuota.stored() fails with ERR_FILE, naming the file and the ledger, when the ledger cannot be written", async () => {
  await withTempDir(async (dir) => {
    const ledger = join(dir, "received.json");
    await Deno.mkdir(ledger); // a folder where the ledger goes: its rename fails, as root too
    const quota = new FileQuota(dir, DEFAULT_FILE_LIMITS, { ledger, free: () => 1e12 });
    quota.take("bob", 5);
    await assert.rejects(
      quota.stored("bob", join(dir, "a.bin"), 5),
      e2eError(
        "ERR_FILE",
        `Cannot record "a.bin" for the file quotas in "${ledger}": Is a directory`,
      ),
    );
  });
});

Deno.test("FileQuota with a ledger counts the files of earlier runs that are still there, and frees what the user removed", async () => {
  await withTempDir(async (dir) => {
    const ledger = join(dir, "received.json");
    const limits = { ...DEFAULT_FILE_LIMITS, peerFiles: 2, freeFloor: 0 };
    const first = new FileQuota(dir, limits, { ledger, free: () => 1e12 });
    assert.equal(await first.load(), undefined); // no ledger yet: nothing counted
    for (const name of ["a.bin", "b.bin"]) {
      await Deno.writeTextFile(join(dir, name), "12345");
      first.take("bob", 5);
      await first.stored("bob", join(dir, name), 5);
    }
    assert.equal((await Deno.stat(ledger)).mode! & 0o777, 0o600);

    // A new run: both files still count.
    const second = new FileQuota(dir, limits, { ledger, free: () => 1e12 });
    await second.load();
    assert.equal(second.refusal("bob", 1), 'the quota of 2 files from "bob" is used up');
    assert.equal(second.refusal("carol", 1), undefined);
    // The user deletes one: its share is given back, at once and in the ledger.
    await Deno.remove(join(dir, "a.bin"));
    assert.equal(second.refusal("bob", 1), undefined);
    await second.flush();
    const third = new FileQuota(dir, limits, { ledger, free: () => 1e12 });
    await third.load();
    second.take("bob", 1);
    assert.equal(third.refusal("bob", 1), undefined);
    assert.equal(JSON.parse(await Deno.readTextFile(ledger)).length, 1);

    // An unreadable ledger is set aside with a reason, not a refusal of everything.
    await Deno.writeTextFile(ledger, "{not json");
    const fourth = new FileQuota(dir, limits, { ledger, free: () => 1e12 });
    assert.match((await fourth.load())!, /unreadable: set aside, the file quotas count from zero/);
    assert.equal(fourth.refusal("bob", 1), undefined);
    assert.equal(await Deno.readTextFile(`${ledger}.unreadable`), "{not json");
  });
});

Deno.test("freeBytes() reads the free space of a folder, or of its nearest parent when it does not exist yet", async () => {
  await withTempDir((dir) => {
    const free = freeBytes(dir);
    assert.ok(Number.isSafeInteger(free) && free > 0, String(free));
    assert.ok(freeBytes(join(dir, "not", "yet")) > 0);
    return Promise.resolve();
  });
});

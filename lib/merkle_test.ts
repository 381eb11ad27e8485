/**
 * RFC 6962 Merkle trees against the published test vectors — the leaves, roots and
 * proofs that the Certificate Transparency implementations test against (from
 * google/certificate-transparency, as kept in transparency-dev/merkle
 * `testonly/constants.go` and `proof/verify_test.go`) — and property tests: every
 * proof for random sizes verifies, every altered one fails.
 */
import assert from "node:assert/strict";
import {
  emptyRoot,
  frontierBefore,
  type Hash,
  leafHash,
  MerkleTree,
  TreeFrontier,
  verifyConsistency,
  verifyInclusion,
} from "./merkle.ts";

const hex = (h: Uint8Array) => Array.from(h, (b) => b.toString(16).padStart(2, "0")).join("");
const unhex = (s: string) => new Uint8Array(s.match(/../g)?.map((b) => parseInt(b, 16)) ?? []);

const LEAVES = [
  "",
  "00",
  "10",
  "2021",
  "3031",
  "40414243",
  "5051525354555657",
  "606162636465666768696a6b6c6d6e6f",
].map(unhex);

// ROOTS[n] is the root of the tree of the first n leaves.
const ROOTS = [
  "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
  "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
  "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
  "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
  "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
  "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
  "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
  "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
  "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

// [leaf index (0-based), tree size, proof]
const INCLUSION: Array<[number, number, string[]]> = [
  [0, 8, [
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
  ]],
  [5, 8, [
    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
  ]],
  [2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]],
  [1, 5, [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
  ]],
  [0, 1, []],
];

// [first size, second size, proof]
const CONSISTENCY: Array<[number, number, string[]]> = [
  [1, 1, []],
  [1, 8, [
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
  ]],
  [6, 8, [
    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
  ]],
  [2, 5, [
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
  ]],
  [6, 7, [
    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
  ]],
];

const tree = new MerkleTree(LEAVES.map(leafHash));

Deno.test("MerkleTree gives the published RFC 6962 roots for 0 to 8 leaves", () => {
  assert.equal(hex(emptyRoot()), ROOTS[0]);
  for (let n = 0; n <= 8; n++) assert.equal(hex(tree.root(n)), ROOTS[n], `size ${n}`);
  assert.equal(hex(leafHash(new Uint8Array())), ROOTS[1]);
});

Deno.test("MerkleTree makes the published inclusion proofs and they verify", () => {
  for (const [index, size, proof] of INCLUSION) {
    assert.deepEqual(tree.inclusionProof(index, size).map(hex), proof, `${index} in ${size}`);
    assert.ok(verifyInclusion(index, size, tree.leaf(index), proof.map(unhex), unhex(ROOTS[size])));
  }
});

Deno.test("MerkleTree makes the published consistency proofs and they verify", () => {
  for (const [first, second, proof] of CONSISTENCY) {
    assert.deepEqual(tree.consistencyProof(first, second).map(hex), proof, `${first}→${second}`);
    assert.ok(
      verifyConsistency(first, second, unhex(ROOTS[first]), unhex(ROOTS[second]), proof.map(unhex)),
    );
  }
});

Deno.test("verifyConsistency() takes the trivial cases and refuses time travel", () => {
  const [a, b] = [unhex(ROOTS[1]), unhex(ROOTS[2])];
  assert.ok(verifyConsistency(0, 0, emptyRoot(), emptyRoot(), []));
  assert.ok(verifyConsistency(0, 2, emptyRoot(), b, []));
  assert.ok(!verifyConsistency(1, 1, a, b, []));
  assert.ok(!verifyConsistency(2, 1, b, a, []));
  assert.ok(!verifyConsistency(1, 2, a, b, []));
  assert.ok(!verifyConsistency(1, 1, a, a, [a]));
});

// A small seeded generator (mulberry32), so a failure can be replayed.
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** Every way to spoil a proof that a verifier must notice. */
function spoiled(proof: Hash[], other: Hash): Hash[][] {
  const out: Hash[][] = [[...proof, other], [other, ...proof]];
  if (proof.length) out.push(proof.slice(0, -1), proof.slice(1));
  for (let i = 0; i < proof.length; i++) {
    const flipped = proof.map((h) => new Uint8Array(h));
    flipped[i][i % 32] ^= 1 << (i % 8);
    out.push(flipped);
    if (proof.length > 1) out.push(proof.toSpliced(i, 1, other));
  }
  if (proof.length > 1) out.push([...proof].reverse());
  return out;
}

Deno.test("every inclusion proof of a random tree verifies and every altered one fails (seed 6962)", () => {
  const next = random(6962);
  const big = new MerkleTree();
  for (let i = 0; i < 300; i++) big.append(leafHash(new Uint8Array([i & 255, i >> 8])));
  const other = leafHash(new TextEncoder().encode("not in the log"));
  for (let run = 0; run < 300; run++) {
    const size = 1 + Math.floor(next() * 300);
    const index = Math.floor(next() * size);
    const proof = big.inclusionProof(index, size);
    const root = big.root(size);
    const leaf = big.leaf(index);
    const what = `leaf ${index} of ${size}`;
    assert.ok(verifyInclusion(index, size, leaf, proof, root), what);
    assert.ok(!verifyInclusion(index, size, other, proof, root), `${what}: another leaf`);
    if (size > 1) {
      assert.ok(!verifyInclusion((index + 1) % size, size, leaf, proof, root), `${what}: index`);
    }
    assert.ok(!verifyInclusion(index, size * 2, leaf, proof, root), `${what}: size × 2`);
    assert.ok(!verifyInclusion(index, size, leaf, proof, other), `${what}: root`);
    for (const bad of spoiled(proof, other)) {
      assert.ok(!verifyInclusion(index, size, leaf, bad, root), `${what}: spoiled proof`);
    }
  }
});

Deno.test("every consistency proof of a random tree verifies and every altered one fails (seed 9162)", () => {
  const next = random(9162);
  const big = new MerkleTree();
  for (let i = 0; i < 300; i++) big.append(leafHash(new Uint8Array([i & 255, i >> 8, 7])));
  const other = leafHash(new TextEncoder().encode("a forked tree"));
  for (let run = 0; run < 300; run++) {
    const second = 1 + Math.floor(next() * 300);
    const first = 1 + Math.floor(next() * second);
    const proof = big.consistencyProof(first, second);
    const [r1, r2] = [big.root(first), big.root(second)];
    const what = `${first}→${second}`;
    assert.ok(verifyConsistency(first, second, r1, r2, proof), what);
    if (first === second) continue;
    assert.ok(!verifyConsistency(first, second, other, r2, proof), `${what}: first root`);
    assert.ok(!verifyConsistency(first, second, r1, other, proof), `${what}: second root`);
    assert.ok(!verifyConsistency(first, second, r2, r1, proof), `${what}: swapped roots`);
    for (const bad of spoiled(proof, other)) {
      assert.ok(!verifyConsistency(first, second, r1, r2, bad), `${what}: spoiled proof`);
    }
  }
});

Deno.test("MerkleTree refuses sizes and indexes it never had", () => {
  assert.throws(() => tree.root(9), RangeError);
  assert.throws(() => tree.inclusionProof(8, 8), RangeError);
  assert.throws(() => tree.inclusionProof(0, 0), RangeError);
  assert.throws(() => tree.consistencyProof(5, 4), RangeError);
  assert.throws(() => tree.leaf(-1), RangeError);
});

Deno.test("TreeFrontier gives the same root as the whole tree at every size, and survives a round trip", () => {
  const frontier = new TreeFrontier();
  assert.equal(hex(frontier.root()), ROOTS[0]);
  const big = new MerkleTree();
  for (let i = 0; i < 100; i++) {
    const leaf = leafHash(new Uint8Array([i]));
    frontier.append(leaf);
    big.append(leaf);
    assert.equal(hex(frontier.root()), hex(big.root()), `size ${i + 1}`);
    const copy = new TreeFrontier(frontier.size, frontier.hashes);
    assert.equal(hex(copy.root()), hex(big.root()));
  }
  for (let n = 0; n <= 8; n++) {
    const f = new TreeFrontier();
    for (const leaf of LEAVES.slice(0, n)) f.append(leafHash(leaf));
    assert.equal(hex(f.root()), ROOTS[n]);
  }
  assert.throws(() => new TreeFrontier(3, [emptyRoot()]), RangeError);
});

Deno.test("frontierBefore() reads from a leaf's inclusion path the frontier that, with that leaf and the later ones, makes the root", () => {
  for (let size = 1; size <= 40; size++) {
    const leaves = Array.from({ length: size }, (_, i) => leafHash(new Uint8Array([i, size])));
    const tree = new MerkleTree(leaves);
    for (let index = 0; index < size; index++) {
      const frontier = frontierBefore(index, size, tree.inclusionProof(index, size));
      for (const leaf of leaves.slice(index)) frontier.append(leaf);
      assert.deepEqual(frontier.root(), tree.root(), `leaf ${index} of ${size}`);
    }
  }
  const tree = new MerkleTree([1, 2, 3].map((b) => leafHash(new Uint8Array([b]))));
  assert.throws(() => frontierBefore(1, 3, tree.inclusionProof(1, 3).slice(1)), RangeError);
  assert.throws(() => frontierBefore(3, 3, []), RangeError);
});

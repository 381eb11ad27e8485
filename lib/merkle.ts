/**
 * The Merkle tree of RFC 6962 §2.1 (the same as RFC 9162 §2.1), over SHA-256:
 * leaf hash = SHA-256(0x00 ‖ leaf), node = SHA-256(0x01 ‖ left ‖ right), the
 * empty tree = SHA-256 of nothing. {@linkcode MerkleTree} keeps every complete
 * subtree's hash so that roots and proofs of any earlier size cost O(log² n)
 * hashes; the verifiers follow RFC 9162 §2.1.3.2 and §2.1.4.2 step by step.
 *
 * @module
 */
import { createHash } from "node:crypto";

/** A SHA-256 hash. */
export type Hash = Uint8Array;

const LEAF = new Uint8Array([0]);
const NODE = new Uint8Array([1]);

/**
 * SHA-256(0x00 ‖ leaf): the hash of one log entry.
 *
 * @example
 * ```ts
 * import { leafHash } from "./merkle.ts";
 * leafHash(new Uint8Array()); // 6e340b9c…
 * ```
 */
export function leafHash(leaf: Uint8Array): Hash {
  return new Uint8Array(createHash("sha256").update(LEAF).update(leaf).digest());
}

/**
 * SHA-256(0x01 ‖ left ‖ right): the hash of an inner node.
 *
 * @example
 * ```ts
 * import { leafHash, nodeHash } from "./merkle.ts";
 * nodeHash(leafHash(new Uint8Array([1])), leafHash(new Uint8Array([2])));
 * ```
 */
export function nodeHash(left: Hash, right: Hash): Hash {
  return new Uint8Array(createHash("sha256").update(NODE).update(left).update(right).digest());
}

/**
 * SHA-256 of nothing: the root of the empty tree.
 *
 * @example
 * ```ts
 * import { emptyRoot } from "./merkle.ts";
 * emptyRoot(); // e3b0c442…
 * ```
 */
export function emptyRoot(): Hash {
  return new Uint8Array(createHash("sha256").digest());
}

// The largest power of two smaller than n (n > 1).
function split(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

/** A growing Merkle tree of leaf hashes, with roots and proofs for any size it has had. */
export class MerkleTree {
  // #levels[h][i]: the hash of the complete subtree of 2^h leaves starting at leaf i·2^h.
  #levels: Hash[][] = [[]];

  /**
   * A tree of the given leaf hashes (in order).
   *
   * @example
   * ```ts
   * import { leafHash, MerkleTree, verifyInclusion } from "./merkle.ts";
   * const tree = new MerkleTree(["a", "b", "c"].map((s) => leafHash(new TextEncoder().encode(s))));
   * const proof = tree.inclusionProof(1, 3);
   * verifyInclusion(1, 3, tree.leaf(1), proof, tree.root(3)); // true
   * ```
   */
  constructor(leafHashes: Iterable<Hash> = []) {
    for (const h of leafHashes) this.append(h);
  }

  /** How many leaves. */
  get size(): number {
    return this.#levels[0].length;
  }

  /** The leaf hash at `index`. */
  leaf(index: number): Hash {
    this.#checkRange(index, 0, this.size - 1, "index");
    return this.#levels[0][index].slice();
  }

  /** Adds a leaf hash; returns its index. */
  append(hash: Hash): number {
    if (!isHash(hash)) throw new TypeError("A leaf hash is 32 bytes");
    const index = this.size;
    this.#levels[0].push(new Uint8Array(hash));
    // Every complete subtree that this leaf completes, bottom up.
    let i = index;
    for (let h = 0; i % 2 === 1; h++) {
      const level = this.#levels[h];
      (this.#levels[h + 1] ??= []).push(nodeHash(level[i - 1], level[i]));
      i = (i - 1) / 2;
    }
    return index;
  }

  /** The root of the tree of the first `size` leaves (default: all). */
  root(size: number = this.size): Hash {
    this.#checkRange(size, 0, this.size, "size");
    return size === 0 ? emptyRoot() : this.#hash(0, size).slice();
  }

  /** The inclusion proof of leaf `index` in the tree of size `size` (RFC 9162 §2.1.3.1). */
  inclusionProof(index: number, size: number = this.size): Hash[] {
    this.#checkRange(size, 1, this.size, "size");
    this.#checkRange(index, 0, size - 1, "index");
    const proof: Hash[] = [];
    // PATH(m, D[lo:hi]), iteratively; hashes are collected leaf-side first.
    const path = (m: number, lo: number, hi: number): void => {
      if (hi - lo === 1) return;
      const k = split(hi - lo);
      if (m < k) {
        path(m, lo, lo + k);
        proof.push(this.#hash(lo + k, hi));
      } else {
        path(m - k, lo + k, hi);
        proof.push(this.#hash(lo, lo + k));
      }
    };
    path(index, 0, size);
    return proof.map((h) => h.slice());
  }

  /** The consistency proof from size `first` to size `second` (RFC 9162 §2.1.4.1). */
  consistencyProof(first: number, second: number = this.size): Hash[] {
    this.#checkRange(second, 0, this.size, "second");
    this.#checkRange(first, 0, second, "first");
    if (first === 0 || first === second) return [];
    const proof: Hash[] = [];
    const sub = (m: number, lo: number, hi: number, complete: boolean): void => {
      if (m === hi - lo) {
        if (!complete) proof.push(this.#hash(lo, hi));
        return;
      }
      const k = split(hi - lo);
      if (m <= k) {
        sub(m, lo, lo + k, complete);
        proof.push(this.#hash(lo + k, hi));
      } else {
        sub(m - k, lo + k, hi, false);
        proof.push(this.#hash(lo, lo + k));
      }
    };
    sub(first, 0, second, true);
    return proof.map((h) => h.slice());
  }

  // MTH(D[lo:hi]) for hi > lo: a stored complete subtree where there is one, else split.
  #hash(lo: number, hi: number): Hash {
    const n = hi - lo;
    if ((n & (n - 1)) === 0 && lo % n === 0) {
      const h = Math.log2(n);
      const stored = this.#levels[h]?.[lo / n];
      if (stored) return stored;
    }
    const k = split(n);
    return nodeHash(this.#hash(lo, lo + k), this.#hash(lo + k, hi));
  }

  #checkRange(value: number, min: number, max: number, what: string): void {
    if (!Number.isSafeInteger(value) || value < min || value > max) {
      throw new RangeError(`${what} ${value} is outside ${min}..${max}`);
    }
  }
}

/**
 * The right edge of a tree: the roots of its complete subtrees, largest first —
 * at most log₂(n) hashes, enough to append leaves and compute the root. A client
 * keeps one to check, entry by entry, that the log's entries make its checkpoint.
 */
export class TreeFrontier {
  #size: number;
  #hashes: Hash[];

  /**
   * A frontier of a tree of `size` leaves with those subtree roots (default: the empty tree).
   *
   * @example
   * ```ts
   * import { leafHash, TreeFrontier } from "./merkle.ts";
   * const frontier = new TreeFrontier();
   * frontier.append(leafHash(new Uint8Array([1])));
   * frontier.root(); // the root of the one-leaf tree
   * ```
   */
  constructor(size = 0, hashes: Hash[] = []) {
    let bits = 0;
    for (let n = size; n > 0; n = Math.floor(n / 2)) bits += n % 2;
    if (
      !Number.isSafeInteger(size) || size < 0 || bits !== hashes.length || !hashes.every(isHash)
    ) {
      throw new RangeError("A frontier has one hash per 1 bit of its size");
    }
    this.#size = size;
    this.#hashes = hashes.map((h) => new Uint8Array(h));
  }

  /** How many leaves. */
  get size(): number {
    return this.#size;
  }

  /** The subtree roots, largest first (copies). */
  get hashes(): Hash[] {
    return this.#hashes.map((h) => h.slice());
  }

  /** Adds a leaf hash. */
  append(hash: Hash): void {
    if (!isHash(hash)) throw new TypeError("A leaf hash is 32 bytes");
    let h: Hash = new Uint8Array(hash);
    // Each trailing 1 bit of the size is a complete subtree the new leaf's side now matches.
    for (let n = this.#size; n % 2 === 1; n = (n - 1) / 2) h = nodeHash(this.#hashes.pop()!, h);
    this.#hashes.push(h);
    this.#size++;
  }

  /** The root of the tree so far. */
  root(): Hash {
    if (this.#hashes.length === 0) return emptyRoot();
    let r = this.#hashes[this.#hashes.length - 1];
    for (let i = this.#hashes.length - 2; i >= 0; i--) r = nodeHash(this.#hashes[i], r);
    return r.slice();
  }
}

/**
 * The frontier of the first `index` leaves of a tree of `size`, read from leaf `index`'s
 * inclusion path (RFC 9162 §2.1.3.2: the hashes the path puts on the left). Appending leaf
 * `index` and every later leaf to it must give the tree's root: so a client that holds a leaf's
 * proof learns exactly which leaves follow it. Throws `RangeError` on a path of the wrong shape
 * (it proves nothing then).
 *
 * @example
 * ```ts
 * import { frontierBefore, leafHash, MerkleTree } from "./merkle.ts";
 * const leaves = [1, 2, 3].map((b) => leafHash(new Uint8Array([b])));
 * const tree = new MerkleTree(leaves);
 * const frontier = frontierBefore(1, 3, tree.inclusionProof(1, 3));
 * frontier.append(leaves[1]);
 * frontier.append(leaves[2]);
 * console.log(frontier.root()); // tree.root()
 * ```
 */
export function frontierBefore(index: number, size: number, path: Hash[]): TreeFrontier {
  if (!Number.isSafeInteger(index) || index < 0 || index >= size) {
    throw new RangeError("The leaf is not in the tree");
  }
  const left: Hash[] = [];
  let fn = index;
  let sn = size - 1;
  for (const p of path) {
    if (sn === 0) throw new RangeError("The path is too long");
    if (fn % 2 === 1 || fn === sn) {
      left.push(p);
      while (fn % 2 === 0 && fn !== 0) {
        fn = Math.floor(fn / 2);
        sn = Math.floor(sn / 2);
      }
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  if (sn !== 0) throw new RangeError("The path is too short");
  return new TreeFrontier(index, left.reverse());
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function isHash(h: unknown): h is Hash {
  return h instanceof Uint8Array && h.length === 32;
}

/**
 * Whether `proof` shows the leaf with hash `leaf` at `index` in the tree of `size`
 * leaves whose root is `root` (RFC 9162 §2.1.3.2). Never throws.
 *
 * @example
 * ```ts
 * import { leafHash, verifyInclusion } from "./merkle.ts";
 * const leaf = leafHash(new Uint8Array([1]));
 * verifyInclusion(0, 1, leaf, [], leaf); // true
 * ```
 */
export function verifyInclusion(
  index: number,
  size: number,
  leaf: Hash,
  proof: Hash[],
  root: Hash,
): boolean {
  if (!Number.isSafeInteger(index) || !Number.isSafeInteger(size) || index < 0) return false;
  if (index >= size || !isHash(leaf) || !isHash(root) || !proof.every(isHash)) return false;
  // Bit operations below need 32-bit values; 2^31 leaves is far beyond any log here.
  if (size > 2 ** 31) return false;
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0) return false;
    if ((fn & 1) === 1 || fn === sn) {
      r = nodeHash(p, r);
      while ((fn & 1) === 0 && fn !== 0) {
        fn >>>= 1;
        sn >>>= 1;
      }
    } else {
      r = nodeHash(r, p);
    }
    fn >>>= 1;
    sn >>>= 1;
  }
  return sn === 0 && equal(r, root);
}

/**
 * Whether `proof` shows that the tree of `first` leaves with root `firstRoot` is a
 * prefix of the tree of `second` leaves with root `secondRoot` (RFC 9162 §2.1.4.2).
 * Never throws.
 *
 * @example
 * ```ts
 * import { leafHash, MerkleTree, verifyConsistency } from "./merkle.ts";
 * const tree = new MerkleTree([1, 2, 3].map((n) => leafHash(new Uint8Array([n]))));
 * verifyConsistency(2, 3, tree.root(2), tree.root(3), tree.consistencyProof(2, 3)); // true
 * ```
 */
export function verifyConsistency(
  first: number,
  second: number,
  firstRoot: Hash,
  secondRoot: Hash,
  proof: Hash[],
): boolean {
  if (!Number.isSafeInteger(first) || !Number.isSafeInteger(second)) return false;
  if (first < 0 || first > second || second > 2 ** 31) return false;
  if (!isHash(firstRoot) || !isHash(secondRoot) || !proof.every(isHash)) return false;
  if (first === second) return proof.length === 0 && equal(firstRoot, secondRoot);
  if (first === 0) return proof.length === 0;
  if (proof.length === 0) return false;
  // When first is a power of two, the first tree is a complete subtree: its root starts the path.
  const path = (first & (first - 1)) === 0 ? [firstRoot, ...proof] : proof;
  let fn = first - 1;
  let sn = second - 1;
  while ((fn & 1) === 1) {
    fn >>>= 1;
    sn >>>= 1;
  }
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0) return false;
    if ((fn & 1) === 1 || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      while ((fn & 1) === 0 && fn !== 0) {
        fn >>>= 1;
        sn >>>= 1;
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn >>>= 1;
    sn >>>= 1;
  }
  return sn === 0 && equal(fr, firstRoot) && equal(sr, secondRoot);
}

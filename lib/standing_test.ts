import assert from "node:assert/strict";
import { parseStanding, type Standing, standingJson } from "./standing.ts";

Deno.test("standingJson() and parseStanding() round-trip each status", () => {
  const all: Standing[] = [
    { status: "revoked" },
    { status: "superseded" },
    { status: "superseded", by: { serial: "5A0C", sameKey: true } },
    { status: "superseded", by: { serial: "01", sameKey: false } },
    { status: "expired", notAfter: new Date("2020-01-08T00:00:00Z") },
  ];
  for (const standing of all) {
    const wire = JSON.parse(JSON.stringify(standingJson(standing)));
    assert.deepEqual(parseStanding(wire), standing);
  }
});

Deno.test("parseStanding() takes what it does not know as no standing, and a bad by as none", () => {
  for (const value of [undefined, null, "revoked", 1, {}, { status: "renamed" }]) {
    assert.equal(parseStanding(value), undefined);
  }
  assert.equal(parseStanding({ status: "expired", notAfter: "soon" }), undefined);
  for (const by of [{ serial: "5a0c", sameKey: true }, { serial: "5A0C" }, "5A0C"]) {
    assert.deepEqual(parseStanding({ status: "superseded", by }), { status: "superseded" });
  }
});

import assert from "node:assert/strict";
import { CaPaths } from "./home.ts";

Deno.test("CaPaths lays the CA out as docs/CA.md says", () => {
  const paths = new CaPaths("/h");
  const expected: Array<[string, string]> = [
    [paths.dir, "/h/ca"],
    [paths.key, "/h/ca/ca.key"],
    [paths.cert, "/h/ca/ca.crt"],
    [paths.config, "/h/ca/openssl.cnf"],
    [paths.index, "/h/ca/index.txt"],
    [paths.indexAttr, "/h/ca/index.txt.attr"],
    [paths.crlnumber, "/h/ca/crlnumber"],
    [paths.generation, "/h/ca/index.gen"],
    [paths.certs, "/h/ca/certs"],
    [paths.crl, "/h/ca/crl.pem"],
    [paths.tmp, "/h/ca/tmp"],
    [paths.lock, "/h/.ca.lock"],
    [paths.invites, "/h/ca/invites.json"],
    [paths.invitesJournal, "/h/ca/invites.journal"],
    [paths.signing, "/h/ca/tmp/signing"],
    [paths.invitesLock, "/h/.invites.lock"],
    [paths.serviceInfo, "/h/ca/service.json"],
    [paths.serviceDir, "/h/ca/service"],
    [paths.serviceKey, "/h/ca/service/key.pem"],
    [paths.serviceCert, "/h/ca/service/cert.pem"],
    [paths.certFile("35BE"), "/h/ca/certs/35BE.pem"],
  ];
  for (const [actual, want] of expected) assert.equal(actual, want);
});

Deno.test("CaPaths can name a CA folder other than HOME/ca, keeping the home's locks", () => {
  const staged = new CaPaths("/h", "/h/.ca-init-x");
  assert.equal(staged.cert, "/h/.ca-init-x/ca.crt");
  assert.equal(staged.serviceKey, "/h/.ca-init-x/service/key.pem");
  assert.equal(staged.lock, "/h/.ca.lock");
  assert.equal(staged.invitesLock, "/h/.invites.lock");
});

// The static server: MIME types, CORS, and HTTP Range (resumed weight downloads depend on it).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { parseRange } from '../../scripts/serve.mjs';
import { ROOT, serve } from './helpers.mjs';

const WEIGHTS = 'weights/tiny-lcm/unet/diffusion_pytorch_model.safetensors';
let server;
before(async () => { server = await serve(); });
after(() => server.close());

test('parseRange', () => {
  assert.deepEqual(parseRange('bytes=0-9', 100), { start: 0, end: 9 });
  assert.deepEqual(parseRange('bytes=90-', 100), { start: 90, end: 99 });
  assert.deepEqual(parseRange('bytes=-10', 100), { start: 90, end: 99 });
  assert.deepEqual(parseRange('bytes=95-200', 100), { start: 95, end: 99 });
  assert.equal(parseRange('bytes=100-', 100), 'unsatisfiable');
  assert.equal(parseRange('bytes=0-1,5-6', 100), null);
  assert.equal(parseRange(undefined, 100), null);
});

test('MIME types and CORS', async () => {
  for (const [url, type] of [['/', 'text/html'], ['/www/main.js', 'text/javascript'],
    ['/model/unet/config.json', 'application/json'], ['/www/style.css', 'text/css']]) {
    const r = await fetch(server.url + url);
    assert.equal(r.status, 200, url);
    assert.ok(r.headers.get('content-type').startsWith(type), `${url}: ${r.headers.get('content-type')}`);
    assert.equal(r.headers.get('access-control-allow-origin'), '*');
    await r.arrayBuffer();
  }
  const pkg = path.join(ROOT, 'www/engine/zepo_bg.wasm');
  if (fs.existsSync(pkg)) {
    const r = await fetch(`${server.url}/www/engine/zepo_bg.wasm`, { method: 'HEAD' });
    assert.equal(r.headers.get('content-type'), 'application/wasm');
  }
});

test('the default model is served at /model/', async () => {
  const r = await fetch(`${server.url}/model/unet/config.json`);
  assert.equal(await r.text(), fs.readFileSync(path.join(ROOT, 'weights/tiny-lcm/unet/config.json'), 'utf8'));
});

test('Range requests resume a download', async () => {
  const whole = fs.readFileSync(path.join(ROOT, WEIGHTS));
  const url = `${server.url}/model/unet/diffusion_pytorch_model.safetensors`;
  const r = await fetch(url, { headers: { Range: 'bytes=1000-1999' } });
  assert.equal(r.status, 206);
  assert.equal(r.headers.get('content-range'), `bytes 1000-1999/${whole.length}`);
  assert.ok(Buffer.from(await r.arrayBuffer()).equals(whole.subarray(1000, 2000)));
  const tail = await fetch(url, { headers: { Range: `bytes=${whole.length - 10}-` } });
  assert.equal(tail.status, 206);
  assert.ok(Buffer.from(await tail.arrayBuffer()).equals(whole.subarray(whole.length - 10)));
  const bad = await fetch(url, { headers: { Range: `bytes=${whole.length}-` } });
  assert.equal(bad.status, 416);
  await bad.arrayBuffer();
  // A stale If-Range validator gets the whole (changed) file.
  const stale = await fetch(url, { headers: { Range: 'bytes=0-9', 'If-Range': '"stale"' } });
  assert.equal(stale.status, 200);
  assert.equal((await stale.arrayBuffer()).byteLength, whole.length);
});

test('paths outside the served directories are not found', async () => {
  for (const p of ['/%2e%2e/%2e%2e/etc/passwd', '/model/%2e%2e/%2e%2e/%2e%2e/etc/passwd', '/nope.txt']) {
    const r = await fetch(server.url + p);
    assert.equal(r.status, 404, p);
    await r.arrayBuffer();
  }
});

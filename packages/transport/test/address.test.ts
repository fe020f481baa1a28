/**
 * Endpoint parsing and formatting: `HOST:PORT`, `[IPv6]:PORT`, and errors that quote the input.
 */
import { expect } from 'chai';
import { formatEndpoint, parseEndpoint } from '@livemig/transport';

describe('parseEndpoint', () => {
  it('parses an IPv4 address and port', () => {
    expect(parseEndpoint('127.0.0.1:4444')).to.deep.equal({ host: '127.0.0.1', port: 4444 });
  });

  it('parses a host name with port 0 (pick a free port)', () => {
    expect(parseEndpoint('localhost:0')).to.deep.equal({ host: 'localhost', port: 0 });
  });

  it('parses a bracketed IPv6 address and strips the brackets', () => {
    expect(parseEndpoint('[::1]:4444')).to.deep.equal({ host: '::1', port: 4444 });
    expect(parseEndpoint('[fe80::1:2]:65535')).to.deep.equal({ host: 'fe80::1:2', port: 65535 });
  });

  it('rejects an address without a port, quoting it and naming the expected form', () => {
    expect(() => parseEndpoint('127.0.0.1')).to.throw('bad address "127.0.0.1": expected HOST:PORT (for IPv6, [ADDR]:PORT)');
  });

  it('rejects an unbracketed IPv6 address', () => {
    expect(() => parseEndpoint('::1:4444')).to.throw(/^bad address "::1:4444": expected HOST:PORT/);
  });

  it('rejects an empty host, an empty port, a non-numeric or negative port and whitespace', () => {
    for (const bad of ['', ':4444', '127.0.0.1:', 'host:44a', 'host:-1', 'my host:1', '[::1]', 'host:1:2']) {
      expect(() => parseEndpoint(bad), JSON.stringify(bad)).to.throw(`bad address "${bad}"`);
    }
  });

  // Regression, fixed (minor): it used to be that the unbracketed form `^([^:\s]+):(\d+)$` accepts brackets inside the host, so
  // "[]:1" parses as host "[]" and "[a:1" as host "[a"; the error only comes later from the
  // resolver (ENOTFOUND) instead of quoting the bad address here.
  it('rejects square brackets that do not enclose an IPv6 address', () => {
    for (const bad of ['[]:1', '[a:1', 'a]:1']) {
      expect(() => parseEndpoint(bad), JSON.stringify(bad)).to.throw(`bad address "${bad}"`);
    }
  });

  it('rejects a port above 65535 with a message naming the port', () => {
    expect(() => parseEndpoint('127.0.0.1:65536')).to.throw('bad port in "127.0.0.1:65536": 65536 is not 0..65535');
    expect(() => parseEndpoint('[::1]:99999')).to.throw('bad port in "[::1]:99999": 99999 is not 0..65535');
  });
});

describe('formatEndpoint', () => {
  it('writes IPv4 and host names as HOST:PORT', () => {
    expect(formatEndpoint({ host: '10.0.0.2', port: 4444 })).to.equal('10.0.0.2:4444');
    expect(formatEndpoint({ host: 'localhost', port: 0 })).to.equal('localhost:0');
  });

  it('brackets IPv6 addresses', () => {
    expect(formatEndpoint({ host: '::1', port: 4444 })).to.equal('[::1]:4444');
  });

  it('round-trips through parseEndpoint', () => {
    for (const text of ['127.0.0.1:1', '[::1]:4444', '[2001:db8::7]:80', 'example.com:65535']) {
      expect(formatEndpoint(parseEndpoint(text))).to.equal(text);
    }
  });
});

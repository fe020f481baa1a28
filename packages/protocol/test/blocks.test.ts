import { expect } from 'chai';
import { BlockTable, MsgType } from '@livemig/protocol';
import { expectProtocolError } from './helpers.js';

const MiB = 1024 * 1024;
const table = () =>
  new BlockTable([
    { name: 'ram0', length: 64 * MiB, pageSize: 4096 },
    { name: 'huge', length: 8 * MiB, pageSize: 2 * MiB },
  ]);

describe('BlockTable', () => {
  it('looks blocks up by name', () => {
    const t = table();
    expect(t.get('huge')).to.deep.equal({ name: 'huge', length: 8 * MiB, pageSize: 2 * MiB });
    expect(t.size).to.equal(2);
    expect(t.names).to.deep.equal(['ram0', 'huge']);
    expect([...t].map((b) => b.name)).to.deep.equal(['ram0', 'huge']);
    expect(t.pageCount('huge')).to.equal(4);
  });

  it('rejects an unknown block name', () => {
    expectProtocolError(() => table().get('foo'), 'UNKNOWN_BLOCK', 'unknown RAM block "foo"');
  });

  it('builds from a SETUP message', () => {
    const t = BlockTable.fromSetup({ type: MsgType.SETUP, guest: { kind: 'g', config: null }, blocks: [{ name: 'a', length: 4096, pageSize: 4096 }], caps: [], vcpus: 1 });
    expect(t.has('a')).to.equal(true);
  });

  it('rejects duplicate block names', () => {
    expectProtocolError(() => new BlockTable([{ name: 'a', length: 4096, pageSize: 4096 }, { name: 'a', length: 4096, pageSize: 4096 }]), 'MALFORMED', 'duplicate block name "a"');
  });

  it('checkRange accepts a range inside the block', () => {
    expect(table().checkRange('ram0', 64 * MiB - 8192, 8192).name).to.equal('ram0');
  });

  it('checkRange rejects a range running past the block end', () => {
    expectProtocolError(() => table().checkRange('ram0', 64 * MiB - 4096, 8192), 'RANGE',
      'offset 0x3fff000 + length 0x2000 out of range for block "ram0" (length 0x4000000)');
  });

  it('checkRange rejects ranges not aligned to the block\'s page size', () => {
    expectProtocolError(() => table().checkRange('huge', 4096, 2 * MiB), 'ALIGN', 'not aligned to page size 0x200000 of block "huge"');
  });

  it('checkRange rejects a page size different from the block\'s', () => {
    expectProtocolError(() => table().checkRange('huge', 0, 2 * MiB, 4096), 'ALIGN', 'page size 0x1000 does not match block "huge" page size 0x200000');
  });

  describe('checkMessage', () => {
    it('rejects PAGES naming an unknown block', () => {
      expectProtocolError(() => table().checkMessage({ type: MsgType.PAGES, block: 'nope', pageSize: 4096, offsets: [0] }), 'UNKNOWN_BLOCK', '"nope"');
    });
    it('rejects a PAGES offset beyond the block', () => {
      expectProtocolError(() => table().checkMessage({ type: MsgType.PAGES, block: 'ram0', pageSize: 4096, offsets: [0, 64 * MiB] }), 'RANGE', 'out of range for block "ram0"');
    });
    it('rejects PAGES whose page size differs from the block\'s', () => {
      expectProtocolError(() => table().checkMessage({ type: MsgType.PAGES, block: 'huge', pageSize: 4096, offsets: [0] }), 'ALIGN', 'does not match');
    });
    it('rejects a PAGE_RUN running past the block', () => {
      expectProtocolError(() => table().checkMessage({ type: MsgType.PAGE_RUN, block: 'huge', pageSize: 2 * MiB, offset: 6 * MiB, count: 2 }), 'RANGE', 'out of range');
    });
    it('rejects a ZERO run past the block', () => {
      expectProtocolError(() => table().checkMessage({ type: MsgType.ZERO, block: 'ram0', pageSize: 4096, runs: [[0, 1], [64 * MiB - 4096, 2]] }), 'RANGE', 'out of range');
    });
    it('rejects a DISCARD range not aligned to a huge-page block', () => {
      expectProtocolError(() => table().checkMessage({ type: MsgType.DISCARD, block: 'huge', ranges: [[4096, 4096]] }), 'ALIGN', 'block "huge"');
    });
    it('rejects a REQ_PAGES outside the block', () => {
      expectProtocolError(() => table().checkMessage({ type: MsgType.REQ_PAGES, block: 'huge', offset: 8 * MiB, length: 2 * MiB }), 'RANGE', 'out of range');
    });
    it('rejects a RECV_BITMAP whose page count differs from the block\'s', () => {
      expectProtocolError(() => table().checkMessage({ type: MsgType.RECV_BITMAP, block: 'huge', pages: 5 }), 'RANGE', 'RECV_BITMAP: 5 pages for block "huge", which has 4');
    });
    it('accepts valid block-referencing messages and ignores the others', () => {
      const t = table();
      t.checkMessage({ type: MsgType.PAGES, block: 'ram0', pageSize: 4096, offsets: [0, 64 * MiB - 4096] });
      t.checkMessage({ type: MsgType.PAGE_RUN, block: 'huge', pageSize: 2 * MiB, offset: 6 * MiB, count: 1 });
      t.checkMessage({ type: MsgType.DISCARD, block: 'huge', ranges: [[0, 8 * MiB]] });
      t.checkMessage({ type: MsgType.RECV_BITMAP, block: 'ram0', pages: 16384 });
      t.checkMessage({ type: MsgType.END });
    });
  });
});

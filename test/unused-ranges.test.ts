/**
 * Ranges a guest declares unused (QEMU's RamDiscardManager case), through the libraries in one
 * process: a source Machine migrated by OutgoingMigration to an IncomingMigration. They are
 * never sent with data; and should the guest write them anyway, postcopy still delivers the
 * data it wrote instead of the zeros it declared.
 */
import { expect } from 'chai';
import { Machine } from '@livemig/machine';
import { OutgoingMigration } from '@livemig/source';
import { IncomingMigration } from '@livemig/dest';

const MiB = 1024 * 1024;

async function migrate(source: Machine, opts: { postcopy: boolean }): Promise<{ sent: Record<string, any>; received: Record<string, any>; dest: Machine | null }> {
  const inc = await IncomingMigration.listen({ listen: '127.0.0.1:0' });
  const accepted = inc.accept();
  const mig = new OutgoingMigration(source, { to: inc.address, postcopy: opts.postcopy, postcopyAfter: 0, downtimeLimitMs: 1000 });
  const [sent, got] = await Promise.all([mig.run(), accepted]);
  inc.close();
  return { sent: sent as Record<string, any>, received: got.report as Record<string, any>, dest: got.machine as Machine | null };
}

describe('ranges the guest declared unused', function () {
  this.timeout(60_000);

  it('are never sent with data: they are zero on the destination whatever they held', async () => {
    // The ab guest writes only the first 8 MiB. The last 4 MiB hold leftover bytes (7s) and
    // are declared unused: the destination must get zeros there (ab's verify checks that
    // every byte outside the sweep is 0), so their data was never sent.
    const src = await Machine.create({ guest: 'ab', vcpus: 1, ram: 16 * MiB, config: { sweep: { start: 0, end: 8 * MiB } } });
    src.blocks[0]!.bytes(12 * MiB, 4 * MiB).fill(7);
    src.declareUnused('ram0', 12 * MiB, 4 * MiB);
    await src.start({ fresh: true });
    try {
      const { sent, received, dest } = await migrate(src, { postcopy: false });
      expect(sent.status, sent.error).to.equal('completed');
      expect(received.status, received.error).to.equal('completed');
      expect(sent.ram.pagesZero).to.be.at.least(1024);
      const integrity = await dest!.verify();
      await dest!.destroy();
      expect(integrity.bad).to.equal(0);
    } finally {
      await src.destroy();
    }
  });

  it('still arrive with the data the guest wrote into them when it writes them during postcopy precopy', async () => {
    // A guest that declares a range unused and writes it anyway: the source sent it as zero,
    // the destination recorded zero; the writes must win (the page is discarded and fetched).
    const src = await Machine.create({ guest: 'ab', vcpus: 1, ram: 16 * MiB });
    src.declareUnused('ram0', 12 * MiB, 4 * MiB);
    await src.start({ fresh: true });
    try {
      const { sent, received, dest } = await migrate(src, { postcopy: true });
      expect(sent.status, sent.error).to.equal('completed');
      expect(sent.mode).to.equal('postcopy');
      expect(received.status, received.error).to.equal('completed');
      const integrity = await dest!.verify();
      await dest!.destroy();
      expect(integrity, JSON.stringify(integrity.firstBad)).to.include({ checked: true, bad: 0 });
    } finally {
      await src.destroy();
    }
  });
});

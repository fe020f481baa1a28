/**
 * vcpu-worker.ts — owns the body of a vCPU thread: report the kernel tid, load the guest
 * module, build zero-copy views of the blocks (without touching RAM), run the guest's init,
 * then loop { check the command word; step }. On STOP it publishes its device slot and parks
 * on the command word (Atomics.wait) until RUN or EXIT. A guest exception escapes to the
 * Worker 'error' event, where the machine records it.
 */
import { parentPort, receiveMessageOnPort, workerData, type TransferListItem } from 'node:worker_threads';
import { gettid } from '@livemig/uffd';
import { CMD, Cmd, ControlLine, DOORBELL, STATE, State, TID } from './control.js';
import type { VcpuContext } from './guest.js';
import { viewBlocks } from './ram-block.js';
import { loadGuestDefinition } from './resolve-guest.js';
import type { VcpuWorkerData } from './vcpu.js';

const data = workerData as VcpuWorkerData;
const line = new ControlLine(data.buffers, data.index);
const tid = gettid();
line.set(TID, tid);

const def = await loadGuestDefinition(data.guestUrl);
const { hostPort, devicePort } = data;
let seq = 0;

const ctx: VcpuContext = {
  index: data.index,
  count: data.count,
  fresh: data.fresh,
  config: data.config,
  blocks: viewBlocks(data.blocks),
  layout: data.blocks,
  device: data.fresh ? undefined : data.device,
  local: {},
  receive() {
    return receiveMessageOnPort(hostPort)?.message;
  },
  send(message: unknown, transfer?: readonly TransferListItem[]) {
    hostPort.postMessage(message, transfer);
  },
  idle(ms = 1) {
    if (line.load(CMD) !== Cmd.RUN) return;
    line.waitSync(DOORBELL, seq, Math.min(Math.max(ms, 0), 1));
  },
  stopRequested() {
    return line.load(CMD) !== Cmd.RUN;
  },
};

def.vcpu.init?.(ctx);
line.set(STATE, State.RUNNING);
parentPort!.postMessage({ type: 'ready', tid });

const vcpu = def.vcpu;
for (;;) {
  const cmd = line.load(CMD);
  if (cmd === Cmd.RUN) {
    seq = line.load(DOORBELL);
    vcpu.step(ctx);
    line.tick();
    continue;
  }
  if (cmd === Cmd.EXIT) break;
  // STOP: publish the device slot, then park until told otherwise.
  devicePort.postMessage(ctx.device);
  line.set(STATE, State.PARKED);
  while (line.load(CMD) === Cmd.STOP) line.waitSync(CMD, Cmd.STOP);
  line.set(STATE, State.RUNNING);
}

hostPort.close();
devicePort.close();

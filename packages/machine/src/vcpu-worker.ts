/**
 * vcpu-worker.ts — owns the body of a vCPU thread. Prepare (at once, or once a machine binds a
 * spare thread): report the kernel tid, load the guest module, build zero-copy views of the
 * blocks (without touching RAM), then park on the command word (HOLD) running no guest code.
 * Release: read the start parameters (fresh flag, device slot) synchronously from the device
 * port, run the guest's init, acknowledge it on the INIT word, then loop { check the command
 * word; step }. On STOP it publishes its device slot and parks on the command word
 * (Atomics.wait) until RUN or EXIT. A guest exception escapes to the Worker 'error' event,
 * where the machine records it.
 */
import { availableParallelism } from 'node:os';
import { parentPort, receiveMessageOnPort, workerData, type TransferListItem } from 'node:worker_threads';
// Subpaths, not the package index: a vCPU worker's imports take ~20 ms less CPU without the rest of it.
import { gettid } from '@livemig/uffd/thread';
import { CMD, Cmd, ControlLine, DOORBELL, INIT, Init, PARKED_AT, STATE, State, STEPPING_SINCE, TID } from './control.js';
import type { VcpuContext } from './guest.js';
import { viewBlocks } from './ram-block.js';
import { loadGuestDefinition } from './resolve-guest.js';
import type { SpareMessage, SpareWorkerData } from './spare-vcpus.js';
import type { VcpuStart, VcpuWorkerData } from './vcpu.js';

/** A spare's one message: what to run, or to end (no machine took it). */
function bound(): Promise<VcpuWorkerData> {
  return new Promise((resolve) =>
    parentPort!.once('message', (m: SpareMessage) => {
      if (m.type === 'bind') resolve(m.data);
      else process.exit(0);
    }),
  );
}

/** Pause after init, before the first step (ms): see below. */
const ACK_PAUSE_MS = 0.2;
const pause = new Int32Array(new SharedArrayBuffer(4));

// A spare (spare-vcpus.ts) has booted and imported all of the above before any machine took
// it; what it runs arrives now, in the one message the taker sends.
const data = (workerData as SpareWorkerData | null)?.spare ? await bound() : (workerData as VcpuWorkerData);
const line = new ControlLine(data.buffers, data.index);
const tid = gettid();
line.set(TID, tid);

const def = await loadGuestDefinition(data.guestUrl);
const { hostPort, devicePort } = data;
let seq = 0;

const blocks = viewBlocks(data.blocks);
const vcpu = def.vcpu;

// Prepared: parked before init until released (RUN) or destroyed (EXIT).
line.set(STATE, State.PREPARED);
parentPort!.postMessage({ type: 'prepared', tid });
while (line.load(CMD) === Cmd.HOLD) line.waitSync(CMD, Cmd.HOLD);

if (line.load(CMD) !== Cmd.EXIT) {
  const start = receiveMessageOnPort(devicePort)?.message as VcpuStart | undefined;
  if (!start) {
    line.set(INIT, Init.FAILED);
    throw new Error('released without start parameters');
  }
  const ctx: VcpuContext = {
    index: data.index,
    count: data.count,
    fresh: start.fresh,
    config: data.config,
    blocks,
    layout: data.blocks,
    device: start.fresh ? undefined : start.device,
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
  try {
    vcpu.init?.(ctx);
  } catch (e) {
    line.set(INIT, Init.FAILED);
    throw e;
  }
  line.set(STATE, State.RUNNING);
  line.set(INIT, Init.OK);
  // Without a spare core, sleep a moment before the first step. The main thread (to see the
  // acknowledgement) and a sibling vCPU released with this one may be queued behind this thread
  // on its CPU, and would otherwise wait out a scheduler slice. Measured on 2 cores with a
  // 2-vCPU ab guest: start() after prepare() 3–5 ms median without the pause, < 1 ms with.
  // (Ending the pause early once the main thread saw every acknowledgement measured worse: the
  // woken vCPUs then preempt the main thread before start() resolves.) With a core to spare
  // for the main thread, the pause would only lengthen the guest's downtime.
  if (data.count >= availableParallelism()) Atomics.wait(pause, 0, 0, ACK_PAUSE_MS);
  // The guest runs on this vCPU from here (the time its pause ends, for the downtime figure).
  line.stamp(STEPPING_SINCE);
  line.set(INIT, Init.STEPPING);

  for (;;) {
    const cmd = line.load(CMD);
    if (cmd === Cmd.RUN) {
      seq = line.load(DOORBELL);
      vcpu.step(ctx);
      line.tick();
      continue;
    }
    if (cmd === Cmd.EXIT) break;
    // STOP: the guest no longer runs here. Publish the device slot, then park until told otherwise.
    line.stamp(PARKED_AT);
    devicePort.postMessage(ctx.device);
    line.set(STATE, State.PARKED);
    while (line.load(CMD) === Cmd.STOP) line.waitSync(CMD, Cmd.STOP);
    line.stamp(STEPPING_SINCE);
    line.set(STATE, State.RUNNING);
  }
}

hostPort.close();
devicePort.close();

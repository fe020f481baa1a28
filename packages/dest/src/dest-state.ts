/**
 * dest-state.ts — owns the destination's migration state machine: an explicit enum and a
 * transition table; a command that arrives in a state where it is not allowed is refused with
 * an error naming both, instead of being acted on.
 *
 *   NONE → SETUP                      the source described the guest; precopy pages flow
 *   SETUP → ADVISE                    postcopy advised (host checked); precopy pages still flow
 *   ADVISE → DISCARD                  source stopped; pages re-dirtied since sent are dropped
 *   ADVISE | DISCARD → LISTENING      userfaultfd fault handling armed
 *   LISTENING → RUNNING               the guest runs here; pages arrive on demand and in background
 *   RUNNING → PAUSED                  postcopy recovery: a channel failed; the guest runs on, vCPUs
 *                                     waiting for missing pages wait, faults are kept
 *   PAUSED → RUNNING                  the source reconnected (RESUME): pages flow again
 *   RUNNING → END                     every page has arrived; fault handling stops
 *   END → COMPLETED
 *   SETUP | ADVISE → COMPLETING → COMPLETED   precopy finished without postcopy
 *   any non-terminal state → FAILED
 */
export enum DestState {
  NONE = 'none',
  SETUP = 'setup',
  ADVISE = 'advise',
  DISCARD = 'discard',
  LISTENING = 'listening',
  RUNNING = 'running',
  PAUSED = 'paused',
  END = 'end',
  COMPLETING = 'completing',
  COMPLETED = 'completed',
  FAILED = 'failed',
}

const TRANSITIONS: Readonly<Record<DestState, readonly DestState[]>> = {
  [DestState.NONE]: [DestState.SETUP],
  [DestState.SETUP]: [DestState.ADVISE, DestState.COMPLETING],
  [DestState.ADVISE]: [DestState.DISCARD, DestState.LISTENING, DestState.COMPLETING],
  [DestState.DISCARD]: [DestState.LISTENING],
  [DestState.LISTENING]: [DestState.RUNNING],
  [DestState.RUNNING]: [DestState.END, DestState.PAUSED],
  [DestState.PAUSED]: [DestState.RUNNING],
  [DestState.END]: [DestState.COMPLETED],
  [DestState.COMPLETING]: [DestState.COMPLETED],
  [DestState.COMPLETED]: [],
  [DestState.FAILED]: [],
};

export class StateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StateError';
  }
}

export class DestStateMachine {
  private state = DestState.NONE;

  get current(): DestState {
    return this.state;
  }

  get terminal(): boolean {
    return this.state === DestState.COMPLETED || this.state === DestState.FAILED;
  }

  /** True once the guest may be running here with pages still missing (postcopy). */
  get postcopy(): boolean {
    return this.state === DestState.LISTENING || this.state === DestState.RUNNING || this.state === DestState.PAUSED || this.state === DestState.END;
  }

  /** Whether the table allows `next` from the current state. */
  can(next: DestState): boolean {
    return next === DestState.FAILED ? !this.terminal : TRANSITIONS[this.state].includes(next);
  }

  /** Moves to `next` on `command`, or throws if the table forbids it. */
  to(next: DestState, command: string): void {
    if (!this.can(next)) {
      throw new StateError(`${command} refused in state ${this.state} (would move to ${next})`);
    }
    this.state = next;
  }

  /** Throws unless the current state is one of `states` (for commands that keep the state). */
  expect(states: readonly DestState[], command: string): void {
    if (!states.includes(this.state)) {
      throw new StateError(`${command} refused in state ${this.state} (allowed in ${states.join(', ')})`);
    }
  }

  /** Moves to FAILED from any non-terminal state. */
  fail(): void {
    if (!this.terminal) this.state = DestState.FAILED;
  }

  describe(): string {
    return `in state ${this.state}`;
  }
}

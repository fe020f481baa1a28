/**
 * dest-state.ts — owns the destination's migration state machine: an explicit enum and a
 * transition table; a command that arrives in a state where it is not allowed is refused
 * with an error naming both, instead of being acted on.
 *
 * Precopy: NONE → SETUP (pages, device state) → COMPLETING → COMPLETED.
 * Any state but COMPLETED may go to FAILED.
 */
export enum DestState {
  NONE = 'none',
  SETUP = 'setup',
  COMPLETING = 'completing',
  COMPLETED = 'completed',
  FAILED = 'failed',
}

const TRANSITIONS: Readonly<Record<DestState, readonly DestState[]>> = {
  [DestState.NONE]: [DestState.SETUP, DestState.FAILED],
  [DestState.SETUP]: [DestState.COMPLETING, DestState.FAILED],
  [DestState.COMPLETING]: [DestState.COMPLETED, DestState.FAILED],
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

  /** Moves to `next` on `command`, or throws if the table forbids it. */
  to(next: DestState, command: string): void {
    if (!TRANSITIONS[this.state].includes(next)) {
      throw new StateError(`${command} refused in state ${this.state} (would move to ${next})`);
    }
    this.state = next;
  }

  /** Throws unless the machine is in `state` (for commands that do not change state). */
  expect(state: DestState, command: string): void {
    if (this.state !== state) throw new StateError(`${command} refused in state ${this.state} (allowed in ${state})`);
  }

  /** Moves to FAILED from any non-terminal state. */
  fail(): void {
    if (!this.terminal) this.state = DestState.FAILED;
  }

  describe(): string {
    return `in state ${this.state}`;
  }
}

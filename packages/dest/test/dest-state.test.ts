/**
 * The destination's migration state machine: the legal postcopy and precopy paths, refusal of
 * every out-of-order command with a StateError naming command and state, and FAILED reachable
 * from non-terminal states only.
 */
import { expect } from 'chai';
import { DestState, DestStateMachine, StateError } from '@livemig/dest';

const S = DestState;

/** A machine driven along `path` (each step a legal move). */
function at(path: DestState[]): DestStateMachine {
  const m = new DestStateMachine();
  for (const s of path) m.to(s, `to ${s}`);
  return m;
}

/** How to reach every state along a legal path. */
const PATHS: Record<DestState, DestState[]> = {
  [S.NONE]: [],
  [S.SETUP]: [S.SETUP],
  [S.ADVISE]: [S.SETUP, S.ADVISE],
  [S.DISCARD]: [S.SETUP, S.ADVISE, S.DISCARD],
  [S.LISTENING]: [S.SETUP, S.ADVISE, S.DISCARD, S.LISTENING],
  [S.RUNNING]: [S.SETUP, S.ADVISE, S.DISCARD, S.LISTENING, S.RUNNING],
  [S.PAUSED]: [S.SETUP, S.ADVISE, S.DISCARD, S.LISTENING, S.RUNNING, S.PAUSED],
  [S.END]: [S.SETUP, S.ADVISE, S.DISCARD, S.LISTENING, S.RUNNING, S.END],
  [S.COMPLETING]: [S.SETUP, S.COMPLETING],
  [S.COMPLETED]: [S.SETUP, S.COMPLETING, S.COMPLETED],
  [S.FAILED]: [],
};

function refused(m: DestStateMachine, next: DestState, command: string): StateError {
  const before = m.current;
  let err: unknown;
  try {
    m.to(next, command);
  } catch (e) {
    err = e;
  }
  expect(err, `${command} in ${before} was accepted`).to.be.instanceOf(StateError);
  expect(m.current, 'a refused command must not move the state').to.equal(before);
  return err as StateError;
}

describe('DestStateMachine', () => {
  it('starts in NONE, not terminal, not postcopy', () => {
    const m = new DestStateMachine();
    expect(m.current).to.equal(S.NONE);
    expect(m.terminal).to.equal(false);
    expect(m.postcopy).to.equal(false);
  });

  it('follows the postcopy path NONE→SETUP→ADVISE→DISCARD→LISTENING→RUNNING→END→COMPLETED', () => {
    const m = new DestStateMachine();
    const seen: DestState[] = [];
    for (const [next, cmd] of [
      [S.SETUP, 'SETUP'], [S.ADVISE, 'ADVISE'], [S.DISCARD, 'DISCARD'], [S.LISTENING, 'LISTEN'],
      [S.RUNNING, 'RUN'], [S.END, 'END'], [S.COMPLETED, 'END'],
    ] as const) {
      m.to(next, cmd);
      seen.push(m.current);
    }
    expect(seen).to.deep.equal([S.SETUP, S.ADVISE, S.DISCARD, S.LISTENING, S.RUNNING, S.END, S.COMPLETED]);
    expect(m.terminal).to.equal(true);
  });

  it('allows LISTEN straight after ADVISE (postcopy with nothing to discard)', () => {
    const m = at([S.SETUP, S.ADVISE]);
    m.to(S.LISTENING, 'LISTEN');
    expect(m.current).to.equal(S.LISTENING);
  });

  it('follows the precopy path NONE→SETUP→COMPLETING→COMPLETED', () => {
    const m = at([S.SETUP, S.COMPLETING, S.COMPLETED]);
    expect(m.current).to.equal(S.COMPLETED);
    expect(m.terminal).to.equal(true);
  });

  it('completes as precopy after a postcopy ADVISE (precopy converged first)', () => {
    const m = at([S.SETUP, S.ADVISE, S.COMPLETING, S.COMPLETED]);
    expect(m.current).to.equal(S.COMPLETED);
  });

  it('is "postcopy" exactly in LISTENING, RUNNING, PAUSED and END', () => {
    for (const s of Object.values(S)) {
      const m = s === S.FAILED ? (() => { const x = new DestStateMachine(); x.fail(); return x; })() : at(PATHS[s]);
      expect(m.postcopy, s).to.equal(s === S.LISTENING || s === S.RUNNING || s === S.PAUSED || s === S.END);
    }
  });

  it('refuses LISTEN in SETUP (no ADVISE), naming the command and the state', () => {
    const e = refused(at(PATHS[S.SETUP]), S.LISTENING, 'LISTEN');
    expect(e.message).to.equal('LISTEN refused in state setup (would move to listening)');
  });

  it('refuses RUN in ADVISE (no LISTEN yet)', () => {
    expect(refused(at(PATHS[S.ADVISE]), S.RUNNING, 'RUN').message).to.equal('RUN refused in state advise (would move to running)');
  });

  it('refuses END in LISTENING (the guest never ran)', () => {
    expect(refused(at(PATHS[S.LISTENING]), S.END, 'END').message).to.equal('END refused in state listening (would move to end)');
  });

  it('refuses SETUP twice', () => {
    expect(refused(at(PATHS[S.SETUP]), S.SETUP, 'SETUP').message).to.equal('SETUP refused in state setup (would move to setup)');
  });

  it('refuses DISCARD after LISTENING and after RUNNING', () => {
    expect(refused(at(PATHS[S.LISTENING]), S.DISCARD, 'DISCARD').message).to.contain('DISCARD refused in state listening');
    expect(refused(at(PATHS[S.RUNNING]), S.DISCARD, 'DISCARD').message).to.contain('DISCARD refused in state running');
  });

  it('refuses DISCARD without ADVISE, and COMPLETE during postcopy', () => {
    expect(refused(at(PATHS[S.SETUP]), S.DISCARD, 'DISCARD').message).to.contain('DISCARD refused in state setup');
    expect(refused(at(PATHS[S.DISCARD]), S.COMPLETING, 'COMPLETE').message).to.contain('COMPLETE refused in state discard');
    expect(refused(at(PATHS[S.RUNNING]), S.COMPLETING, 'COMPLETE').message).to.contain('COMPLETE refused in state running');
  });

  it('refuses every command before SETUP', () => {
    for (const s of [S.ADVISE, S.DISCARD, S.LISTENING, S.RUNNING, S.END, S.COMPLETING, S.COMPLETED]) {
      expect(refused(new DestStateMachine(), s, `cmd-${s}`).message).to.contain(`cmd-${s} refused in state none`);
    }
  });

  it('pauses postcopy on a failed channel and runs again on RESUME, and refuses END while paused', () => {
    const m = at(PATHS[S.RUNNING]);
    m.to(S.PAUSED, 'pause');
    expect(m.postcopy).to.equal(true);
    expect(refused(m, S.END, 'END').message).to.contain('END refused in state paused');
    m.to(S.RUNNING, 'RESUME');
    m.to(S.PAUSED, 'pause');
    m.to(S.RUNNING, 'RESUME');
    m.to(S.END, 'END');
  });

  it('allows exactly the moves of the transition table, from every state', () => {
    const legal: Record<DestState, DestState[]> = {
      [S.NONE]: [S.SETUP],
      [S.SETUP]: [S.ADVISE, S.COMPLETING],
      [S.ADVISE]: [S.DISCARD, S.LISTENING, S.COMPLETING],
      [S.DISCARD]: [S.LISTENING],
      [S.LISTENING]: [S.RUNNING],
      [S.RUNNING]: [S.END, S.PAUSED],
      [S.PAUSED]: [S.RUNNING],
      [S.END]: [S.COMPLETED],
      [S.COMPLETING]: [S.COMPLETED],
      [S.COMPLETED]: [],
      [S.FAILED]: [],
    };
    for (const from of Object.values(S)) {
      if (from === S.FAILED) continue;
      for (const to of Object.values(S)) {
        if (to === S.FAILED) continue;
        expect(at(PATHS[from]).can(to), `${from} → ${to}`).to.equal(legal[from].includes(to));
      }
    }
  });

  it('reaches FAILED from every non-terminal state', () => {
    for (const s of [S.NONE, S.SETUP, S.ADVISE, S.DISCARD, S.LISTENING, S.RUNNING, S.END, S.COMPLETING]) {
      const m = at(PATHS[s]);
      expect(m.can(S.FAILED), s).to.equal(true);
      m.fail();
      expect(m.current, s).to.equal(S.FAILED);
      expect(m.terminal).to.equal(true);
      const n = at(PATHS[s]);
      n.to(S.FAILED, 'ERROR');
      expect(n.current, s).to.equal(S.FAILED);
    }
  });

  it('does not leave COMPLETED for FAILED: fail() is a no-op and to(FAILED) is refused', () => {
    const m = at(PATHS[S.COMPLETED]);
    expect(m.can(S.FAILED)).to.equal(false);
    m.fail();
    expect(m.current).to.equal(S.COMPLETED);
    expect(refused(m, S.FAILED, 'ERROR').message).to.equal('ERROR refused in state completed (would move to failed)');
  });

  it('FAILED is final: nothing moves out of it', () => {
    const m = at(PATHS[S.RUNNING]);
    m.fail();
    for (const s of Object.values(S)) expect(m.can(s), s).to.equal(false);
    expect(refused(m, S.END, 'END').message).to.contain('END refused in state failed');
    m.fail();
    expect(m.current).to.equal(S.FAILED);
  });

  it('expect() passes in an allowed state and otherwise throws naming the command, the state and the allowed ones', () => {
    const m = at(PATHS[S.SETUP]);
    expect(() => m.expect([S.SETUP, S.ADVISE], 'ROUND')).to.not.throw();
    const r = at(PATHS[S.RUNNING]);
    expect(() => r.expect([S.SETUP, S.ADVISE], 'ROUND'))
      .to.throw(StateError, 'ROUND refused in state running (allowed in setup, advise)');
    expect(r.current).to.equal(S.RUNNING);
  });

  it('describe() names the current state', () => {
    expect(at(PATHS[S.ADVISE]).describe()).to.equal('in state advise');
  });
});

/** A failure that happens at most once, and the callbacks waiting to hear of it. */
export class FailureLatch {
  private error: Error | undefined;
  private readonly callbacks: ((error: Error) => void)[] = [];

  /** The failure, once it happened. */
  get failure(): Error | undefined {
    return this.error;
  }

  /** Calls `callback` once with the failure: later, or soon if it already happened. */
  onFailure(callback: (error: Error) => void): void {
    const error = this.error;
    if (error) queueMicrotask(() => callback(error));
    else this.callbacks.push(callback);
  }

  /** Records the failure and tells everyone; false (and nothing happens) if it had already failed. */
  fail(error: Error): boolean {
    if (this.error) return false;
    this.error = error;
    for (const cb of this.callbacks.splice(0)) cb(error);
    return true;
  }
}

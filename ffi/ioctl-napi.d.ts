/** Types for the ioctl-napi package (CommonJS, ships none). */
declare module 'ioctl-napi' {
  /**
   * ioctl(2). `request` must fit a uint32, a number `argument` an int32; a
   * Uint8Array argument is passed as a pointer to its bytes. On failure it
   * throws an Error whose `code` is the errno number as a decimal string.
   */
  function ioctl(fd: number, request: number, argument: Uint8Array | number): number;
  export = ioctl;
}

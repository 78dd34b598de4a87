export * from './architectures.ts';
export * from './errno.ts';
export * from './errors.ts';
export * from './ioctl.ts';
export * from './lock-types.ts';
export * from './names.ts';
export * from './open-flags.ts';
export * from './translate.ts';

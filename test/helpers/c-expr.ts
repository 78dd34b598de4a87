/** Evaluating the integer expressions cpp leaves of header macros (tests against the real uapi headers). */

/**
 * Integer expressions as cpp leaves them: literals (numbers and 'c' characters), parentheses, ~ -,
 * and | ^ & << >> + -. Unsigned 32-bit result. (sizeof is for the caller to replace first.)
 */
export function evaluateC(expression: string): number {
  const tokens = expression.match(/'[^'\\]'|0[xX][0-9a-fA-F]+[uUlL]*|\d+[uUlL]*|<<|>>|\S/g) ?? [];
  let at = 0;
  const levels = [['|'], ['^'], ['&'], ['<<', '>>'], ['+', '-']];
  const binary = (level: number): number => {
    if (level === levels.length) return unary();
    let left = binary(level + 1);
    while (levels[level]!.includes(tokens[at] ?? '')) {
      const op = tokens[at++];
      const right = binary(level + 1);
      left = op === '|' ? left | right : op === '^' ? left ^ right : op === '&' ? left & right
        : op === '<<' ? left << right : op === '>>' ? left >> right : op === '+' ? left + right : left - right;
    }
    return left;
  };
  const unary = (): number => {
    const token = tokens[at++];
    if (token === '(') {
      const value = binary(0);
      if (tokens[at++] !== ')') throw new Error(`unbalanced: ${expression}`);
      return value;
    }
    if (token === '~') return ~unary();
    if (token !== undefined && /^'.'$/.test(token)) return token.charCodeAt(1);
    if (token === '-') return -unary();
    const literal = token?.replace(/[uUlL]+$/, '') ?? '';
    if (/^0[xX][0-9a-fA-F]+$/.test(literal)) return parseInt(literal.slice(2), 16);
    if (/^0[0-7]*$/.test(literal)) return parseInt(literal, 8);
    if (/^[1-9]\d*$/.test(literal)) return parseInt(literal, 10);
    throw new Error(`cannot evaluate '${expression}' (at '${token}')`);
  };
  const value = binary(0);
  if (at !== tokens.length) throw new Error(`trailing tokens in '${expression}'`);
  return value >>> 0;
}

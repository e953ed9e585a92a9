// Numbers and times for people, without Intl: the first use of Intl in a page loads the
// browser's locale data, which cost 25-35 ms of the first render (several times that on a
// busy machine). Times are shown on the 24-hour clock, the same in every locale.

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

const two = (n) => String(n).padStart(2, '0');

/** An integer with its thousands grouped: 100000 → "100,000". */
export function groupDigits(n) {
  const s = String(Math.trunc(Math.abs(n)));
  let out = '';
  for (let i = 0; i < s.length; i++) {
    if (i > 0 && (s.length - i) % 3 === 0) out += ',';
    out += s[i];
  }
  return (n < 0 ? '-' : '') + out;
}

/** The local time of day: "09:24:43". */
export function clockTime(d) {
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

/** The local date and time to the minute: "7 Dec 2026, 09:24". */
export function dateTime(d) {
  return `${d.getDate()} ${MONTHS[d.getMonth()]} ${d.getFullYear()}, ${two(d.getHours())}:${two(d.getMinutes())}`;
}

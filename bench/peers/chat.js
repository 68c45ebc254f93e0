// k6: closed-loop users POSTing streaming chat completions to llm-sim.
// k6 has no streaming reader: it receives the whole event stream as one
// body, which this script then splits into events and parses, as a client
// that counts tokens must. Settings come from the environment (bench/peers.py
// sets them): PEERS_URL, PEERS_USERS, PEERS_DURATION (seconds),
// PEERS_MAX_TOKENS, PEERS_MODEL, PEERS_PROMPT.
import http from 'k6/http';
import { Counter } from 'k6/metrics';

const events = new Counter('stream_events');

export const options = {
  scenarios: {
    chat: {
      executor: 'constant-vus',
      vus: Number(__ENV.PEERS_USERS),
      duration: `${__ENV.PEERS_DURATION}s`,
      gracefulStop: '5s',
    },
  },
};

const url = `${__ENV.PEERS_URL}/v1/chat/completions`;
const body = JSON.stringify({
  model: __ENV.PEERS_MODEL,
  messages: [{ role: 'user', content: __ENV.PEERS_PROMPT }],
  max_tokens: Number(__ENV.PEERS_MAX_TOKENS),
  stream: true,
});
const params = { headers: { 'Content-Type': 'application/json' } };

export default function () {
  const res = http.post(url, body, params);
  if (res.status !== 200 || typeof res.body !== 'string') {
    return;
  }
  let n = 0;
  for (const line of res.body.split('\n')) {
    if (!line.startsWith('data: ') || line === 'data: [DONE]') {
      continue;
    }
    const chunk = JSON.parse(line.slice(6));
    if (chunk.choices.length > 0 && chunk.choices[0].delta.content) {
      n += 1;
    }
  }
  events.add(n);
}

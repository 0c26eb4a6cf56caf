// A Supabase Edge Function in front of the mqtt_messages table, for when the rows need work
// before they are stored (validation, fan-out). mqttbuffer POSTs its body here unchanged: a JSON
// array, oldest first, of {id, topic, payload, qos, retain, received_at, payload_encoding}.
//
// Deploy: supabase functions deploy mqttbuffer-ingest
// mqttbuffer: api.url: https://<project>.supabase.co/functions/v1/mqttbuffer-ingest
//             api.key: the project's anon key (the function checks it as a JWT by default)
//
// Answer 2xx only once the rows are stored: mqttbuffer deletes its copies on a 2xx. Duplicates
// (a resend after a lost answer) are skipped by ignoreDuplicates, so a resend gets 201 too.
import { createClient } from "npm:@supabase/supabase-js@2";

const supabase = createClient(
  Deno.env.get("SUPABASE_URL")!,
  Deno.env.get("SUPABASE_SERVICE_ROLE_KEY")!,
);

Deno.serve(async (req) => {
  let rows: unknown;
  try {
    rows = await req.json();
  } catch {
    return new Response(JSON.stringify({ message: "body is not JSON" }), { status: 400 });
  }
  if (!Array.isArray(rows)) {
    return new Response(JSON.stringify({ message: "expected a JSON array" }), { status: 400 });
  }
  const { error } = await supabase
    .from("mqtt_messages")
    .upsert(rows, { onConflict: "id", ignoreDuplicates: true });
  if (error) {
    // 400 tells mqttbuffer the rows themselves are refused (it isolates them); a 5xx is retried.
    const status = error.code?.startsWith("22") || error.code?.startsWith("23") ? 400 : 500;
    return new Response(JSON.stringify(error), { status });
  }
  return new Response(null, { status: 201 });
});

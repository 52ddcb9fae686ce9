// Data collection rule of kind Direct: the Logs Ingestion API entry point (its own ingestion
// endpoint, no DCE). Two streams, each passed through unchanged (transformKql 'source') into its
// custom table: the audit events, and one health row per org per connector run.

@description('DCR name.')
param name string

@description('Region of the Log Analytics workspace; a DCR must be in its destination workspace region.')
param location string

@description('Resource id of the destination Log Analytics workspace.')
param workspaceResourceId string

@description('Output stream of the audit events: Custom-<table name>.')
param outputStream string

@description('Output stream of the health rows: Custom-<table name>.')
param healthOutputStream string

param tags object = {}

// The streams the connector posts to (shared/schema.py AUDIT_TABLE.stream and HEALTH_TABLE.stream).
var streamName = 'Custom-PulumiAuditLogs'
var healthStreamName = 'Custom-PulumiAuditConnectorHealth'

resource dcr 'Microsoft.Insights/dataCollectionRules@2023-03-11' = {
  name: name
  location: location
  kind: 'Direct'
  tags: tags
  properties: {
    description: 'Pulumi Cloud audit events and connector health rows sent by the connector Function App.'
    streamDeclarations: {
      // Exactly the row the code sends: shared/schema.py COLUMNS (tests/test_infra.py checks it).
      'Custom-PulumiAuditLogs': {
        columns: [
          { name: 'TimeGenerated', type: 'datetime' }
          { name: 'Timestamp_d', type: 'long' }
          { name: 'SourceIP_s', type: 'string' }
          { name: 'Event_s', type: 'string' }
          { name: 'Description_s', type: 'string' }
          { name: 'UserName_s', type: 'string' }
          { name: 'UserLogin_s', type: 'string' }
          { name: 'UserAvatarUrl_s', type: 'string' }
          { name: 'TokenID_s', type: 'string' }
          { name: 'TokenName_s', type: 'string' }
          { name: 'ActorName_s', type: 'string' }
          { name: 'ActorUrn_s', type: 'string' }
          { name: 'RequireOrgAdmin_b', type: 'boolean' }
          { name: 'RequireStackAdmin_b', type: 'boolean' }
          { name: 'AuthFailure_b', type: 'boolean' }
          { name: 'OrgName_s', type: 'string' }
          { name: 'EventId_s', type: 'string' }
          { name: 'Product_s', type: 'string' }
          { name: 'Category_s', type: 'string' }
          { name: 'EventTime_t', type: 'datetime' }
          { name: 'RawEvent_s', type: 'string' }
          { name: 'ExtraFields_s', type: 'string' }
        ]
      }
      // shared/schema.py HEALTH_TABLE columns, same order and types.
      'Custom-PulumiAuditConnectorHealth': {
        columns: [
          { name: 'TimeGenerated', type: 'datetime' }
          { name: 'RunId_s', type: 'string' }
          { name: 'OrgName_s', type: 'string' }
          { name: 'RunKind_s', type: 'string' }
          { name: 'Status_s', type: 'string' }
          { name: 'EventsFetched_d', type: 'long' }
          { name: 'EventsSent_d', type: 'long' }
          { name: 'DuplicatesSkipped_d', type: 'long' }
          { name: 'DeadLettered_d', type: 'long' }
          { name: 'Truncated_d', type: 'long' }
          { name: 'LagSeconds_d', type: 'long' }
          { name: 'WatermarkTime_t', type: 'datetime' }
          { name: 'Error_s', type: 'string' }
          { name: 'ConnectorVersion_s', type: 'string' }
          { name: 'Host_s', type: 'string' }
        ]
      }
    }
    destinations: {
      logAnalytics: [
        {
          name: 'sentinelWorkspace'
          workspaceResourceId: workspaceResourceId
        }
      ]
    }
    dataFlows: [
      {
        streams: [
          streamName
        ]
        destinations: [
          'sentinelWorkspace'
        ]
        transformKql: 'source'
        outputStream: outputStream
      }
      {
        streams: [
          healthStreamName
        ]
        destinations: [
          'sentinelWorkspace'
        ]
        transformKql: 'source'
        outputStream: healthOutputStream
      }
    ]
  }
}

output name string = dcr.name
output logsIngestionEndpoint string = dcr.properties.endpoints.logsIngestion
output immutableId string = dcr.properties.immutableId
output streamName string = streamName
output healthStreamName string = healthStreamName
